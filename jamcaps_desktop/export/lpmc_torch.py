"""LP-MusicCaps in PyTorch: this project's own port (the optional ``export`` extra), the eager reference the
ONNX graphs of ``models.lpmc`` are checked and timed against. It loads the official checkpoint's
``state_dict`` and computes what ``models.lpmc`` describes: the STFT front end (the real part's power),
the convolutions and sinusoids, BART's encoder, and BART's decoder one step at a time with a key/value
cache. ``StepSession`` answers like an ONNX Runtime session of the one-step graph, so the same search
code (``models.lpmc.CachedDecoder``, ``greedy``, ``beam_search``) drives either.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn
from torch.nn import functional

from jamcaps_desktop.models.lpmc import HOP, N_FFT

PREFIX = "bart.model."


class LPMCPort(nn.Module):
    def __init__(self, weights: dict[str, Any], cfg: dict[str, Any]) -> None:
        super().__init__()
        self.cfg = cfg
        self.d = int(cfg["d_model"])
        self.w = {k.removeprefix("module."): torch.as_tensor(np.asarray(v, dtype=np.float32))
                  for k, v in weights.items()}
        self.enc_heads, self.dec_heads = int(cfg["encoder_attention_heads"]), int(cfg["decoder_attention_heads"])

    def to(self, *args: Any, **kwargs: Any) -> LPMCPort:  # type: ignore[override]
        self.w = {k: v.to(*args, **kwargs) for k, v in self.w.items()}
        return self

    # -- pieces -------------------------------------------------------------------------------
    def _linear(self, x: Tensor, key: str) -> Tensor:
        return functional.linear(x, self.w[key + ".weight"], self.w[key + ".bias"])

    def _norm(self, x: Tensor, key: str) -> Tensor:
        return functional.layer_norm(x, (self.d,), self.w[key + ".weight"], self.w[key + ".bias"], 1e-5)

    def _heads(self, x: Tensor, heads: int) -> Tensor:
        return x.view(x.shape[0], x.shape[1], heads, self.d // heads).transpose(1, 2)

    def _attend(self, q: Tensor, k: Tensor, v: Tensor, heads: int, key: str, mask: Tensor | None = None) -> Tensor:
        scores = (q * (self.d // heads) ** -0.5) @ k.transpose(-1, -2)
        if mask is not None:
            scores = scores + mask
        out = (scores.softmax(-1) @ v).transpose(1, 2).reshape(q.shape[0], q.shape[2], self.d)
        return self._linear(out, key + ".out_proj")

    def log_mel(self, audio: Tensor) -> Tensor:
        window = torch.hann_window(N_FFT, periodic=True, dtype=audio.dtype, device=audio.device)
        spectrum = torch.stft(audio, N_FFT, HOP, N_FFT, window, center=True, pad_mode="reflect", return_complex=True)
        mel = self.w["audio_encoder.mel_encoder.mel_scale.fb"].T.to(audio.dtype) @ spectrum.real.pow(2)
        return 10.0 * torch.log10(mel.clamp(min=1e-10))

    def encode(self, log_mel: Tensor) -> Tensor:
        w = self.w
        x = functional.gelu(functional.conv1d(log_mel, w["audio_encoder.conv1.weight"], w["audio_encoder.conv1.bias"],
                                              padding=1))
        index = 0
        while f"audio_encoder.conv_stack.{index}.weight" in w:
            key = f"audio_encoder.conv_stack.{index}"
            x = functional.gelu(functional.conv1d(x, w[key + ".weight"], w[key + ".bias"], stride=2, padding=1))
            index += 1
        x = x.transpose(1, 2) + w["audio_encoder.positional_embedding"]
        x = x + w[PREFIX + "encoder.embed_positions.weight"][2:2 + x.shape[1]]
        x = self._norm(x, PREFIX + "encoder.layernorm_embedding")
        for layer in range(int(self.cfg["encoder_layers"])):
            key = f"{PREFIX}encoder.layers.{layer}"
            h = self.enc_heads
            q, k, v = (self._heads(self._linear(x, f"{key}.self_attn.{p}_proj"), h) for p in "qkv")
            x = self._norm(x + self._attend(q, k, v, h, key + ".self_attn"), key + ".self_attn_layer_norm")
            inner = self._linear(functional.gelu(self._linear(x, key + ".fc1")), key + ".fc2")
            x = self._norm(x + inner, key + ".final_layer_norm")
        return x

    def step(self, ids: Tensor, hidden: Tensor, past: list[Tensor]) -> tuple[Tensor, list[Tensor]]:
        """One decoding step: the newest token of each row, the encoder states and the cache."""
        w, h = self.w, self.dec_heads
        table = w[PREFIX + "shared.weight"]
        position = past[0].shape[2]
        x = table[ids] * (math.sqrt(self.d) if self.cfg.get("scale_embedding") else 1.0)
        x = x + w[PREFIX + "decoder.embed_positions.weight"][2 + position]
        x = self._norm(x, PREFIX + "decoder.layernorm_embedding")
        present: list[Tensor] = []
        for layer in range(int(self.cfg["decoder_layers"])):
            key = f"{PREFIX}decoder.layers.{layer}"
            q = self._heads(self._linear(x, key + ".self_attn.q_proj"), h)
            k = torch.cat([past[2 * layer], self._heads(self._linear(x, key + ".self_attn.k_proj"), h)], dim=2)
            v = torch.cat([past[2 * layer + 1], self._heads(self._linear(x, key + ".self_attn.v_proj"), h)], dim=2)
            present += [k, v]
            x = self._norm(x + self._attend(q, k, v, h, key + ".self_attn"), key + ".self_attn_layer_norm")
            q = self._heads(self._linear(x, key + ".encoder_attn.q_proj"), h)
            ck = self._heads(self._linear(hidden, key + ".encoder_attn.k_proj"), h)
            cv = self._heads(self._linear(hidden, key + ".encoder_attn.v_proj"), h)
            x = self._norm(x + self._attend(q, ck, cv, h, key + ".encoder_attn"), key + ".encoder_attn_layer_norm")
            inner = self._linear(functional.gelu(self._linear(x, key + ".fc1")), key + ".fc2")
            x = self._norm(x + inner, key + ".final_layer_norm")
        logits = x @ table.T + w["bart.final_logits_bias"].reshape(-1)
        return logits, present


class StepSession:
    """The port's decoding step behind the interface of an ONNX Runtime session of the one-step graph."""

    def __init__(self, port: LPMCPort, device: str = "cpu", half: bool = False) -> None:
        self.port, self.device, self.half = port, device, half

    def get_inputs(self) -> list[Any]:
        return []

    def run(self, _names: Any, feeds: dict[str, np.ndarray]) -> list[np.ndarray]:
        layers = int(self.port.cfg["decoder_layers"])
        with torch.inference_mode(), torch.autocast(self.device, dtype=torch.float16, enabled=self.half):
            ids = torch.from_numpy(feeds["decoder_input_ids"]).to(self.device)
            hidden = torch.from_numpy(feeds["encoder_hidden"]).to(self.device)
            past = [torch.from_numpy(feeds[f"past_{kind}_{i}"]).to(self.device)
                    for i in range(layers) for kind in ("key", "value")]
            logits, present = self.port.step(ids, hidden, past)
            return [logits.float().cpu().numpy()] + [p.float().cpu().numpy() for p in present]
