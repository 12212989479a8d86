"""LP-MusicCaps in PyTorch: this project's own port (the optional ``export`` extra), the eager reference the
ONNX graphs of ``models.lpmc`` are checked and timed against. It loads the official checkpoint's
``state_dict`` and computes what ``models.lpmc`` describes: the STFT front end (the real part's power),
the convolutions and sinusoids, BART's encoder, and BART's decoder one step at a time with a key/value
cache. ``TorchSteps`` computes a search step on the port's device as the app's search graphs do
(``models.lpmc_search``), so the same search (``models.lpmc_search.search``) drives either.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn
from torch.nn import functional

from jamcaps_desktop.models.lpmc import HOP, N_FFT
from jamcaps_desktop.models.lpmc_search import FORBIDDEN, step_rules

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

    def cross_cache(self, hidden: Tensor) -> list[tuple[Tensor, Tensor]]:
        """Every decoder layer's cross-attention keys and values of the encoder's states [B, S, d], once per
        search: [B, 1, H, S, d/H] each, the 1 broadcasting over a chunk's beams."""
        h = self.dec_heads
        cache = []
        for layer in range(int(self.cfg["decoder_layers"])):
            key = f"{PREFIX}decoder.layers.{layer}.encoder_attn"
            cache.append((self._heads(self._linear(hidden, key + ".k_proj"), h).unsqueeze(1),
                          self._heads(self._linear(hidden, key + ".v_proj"), h).unsqueeze(1)))
        return cache

    def step(self, ids: Tensor, past: list[Tensor], cross: list[tuple[Tensor, Tensor]], beams: int
             ) -> tuple[Tensor, list[Tensor]]:
        """One decoding step of N = chunks × beams rows: the newest token of each row [N, 1], the cache
        [N, H, P, d/H] per layer's keys and values, and ``cross_cache``'s keys and values → logits [N, 1, V]
        and the cache with this step."""
        w, h = self.w, self.dec_heads
        table = w[PREFIX + "shared.weight"]
        position = past[0].shape[2]
        x = table[ids] * (math.sqrt(self.d) if self.cfg.get("scale_embedding") else 1.0)
        x = x + w[PREFIX + "decoder.embed_positions.weight"][2 + position]
        x = self._norm(x, PREFIX + "decoder.layernorm_embedding")
        present: list[Tensor] = []
        rows = ids.shape[0]
        for layer in range(int(self.cfg["decoder_layers"])):
            key = f"{PREFIX}decoder.layers.{layer}"
            q = self._heads(self._linear(x, key + ".self_attn.q_proj"), h)
            k = torch.cat([past[2 * layer], self._heads(self._linear(x, key + ".self_attn.k_proj"), h)], dim=2)
            v = torch.cat([past[2 * layer + 1], self._heads(self._linear(x, key + ".self_attn.v_proj"), h)], dim=2)
            present += [k, v]
            x = self._norm(x + self._attend(q, k, v, h, key + ".self_attn"), key + ".self_attn_layer_norm")
            q = self._heads(self._linear(x, key + ".encoder_attn.q_proj"), h) * (self.d // h) ** -0.5
            ck, cv = cross[layer]
            grouped = q.reshape(-1, beams, *q.shape[1:])                            # [B, beams, H, 1, hd]
            context = ((grouped @ ck.transpose(-1, -2)).softmax(-1) @ cv).reshape(rows, h, 1, self.d // h)
            attended = self._linear(context.transpose(1, 2).reshape(rows, 1, self.d), key + ".encoder_attn.out_proj")
            x = self._norm(x + attended, key + ".encoder_attn_layer_norm")
            inner = self._linear(functional.gelu(self._linear(x, key + ".fc1")), key + ".fc2")
            x = self._norm(x + inner, key + ".final_layer_norm")
        logits = x @ table.T + w["bart.final_logits_bias"].reshape(-1)
        return logits, present


class TorchSteps:
    """The port's decoding steps for ``models.lpmc_search.search``, the generation rules and the choice of
    each chunk's best candidates computed in PyTorch on the port's device, as the graphs compute them."""

    def __init__(self, port: LPMCPort, device: str = "cpu", half: bool = False) -> None:
        self.port, self.device, self.half = port, device, half
        self.layers, self.heads = int(port.cfg["decoder_layers"]), port.dec_heads
        cfg = port.cfg
        self.eos = int(cfg.get("eos_token_id", 2))
        self.ngram = int(cfg.get("no_repeat_ngram_size", 0) or 0)
        self._cross: list[tuple[Tensor, Tensor]] = []
        self._sequences: Tensor | None = None
        self._past: list[Tensor] = []

    def _context(self) -> Any:
        return torch.autocast(self.device, dtype=torch.float16, enabled=self.half)

    @torch.inference_mode()
    def start(self, encoder_hidden: np.ndarray, beams: int) -> None:
        with self._context():
            hidden = torch.from_numpy(np.asarray(encoder_hidden, np.float32)).to(self.device)
            self._cross = self.port.cross_cache(hidden)
        self._sequences, self._past = None, []

    def finish(self) -> None:
        self._cross, self._sequences, self._past = [], None, []

    @torch.inference_mode()
    def step(self, tokens: np.ndarray, parents: np.ndarray, beam_scores: np.ndarray, beams: int,
             eos_banned: bool, forced_token: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        new = torch.tensor(np.asarray(tokens, np.int64), device=self.device)  # a copy: the caller reuses its array
        rows = new.shape[0]
        if self._sequences is None:
            sequences = new[:, None]
            dtype = torch.float16 if self.half else torch.float32
            past = [torch.zeros(rows, self.heads, 0, self.port.d // self.heads, dtype=dtype, device=self.device)
                    for _ in range(2 * self.layers)]
        else:
            order = torch.tensor(np.asarray(parents, np.int64), device=self.device)
            sequences = torch.cat([self._sequences[order], new[:, None]], dim=1)
            past = [tensor[order] for tensor in self._past]
        with self._context():
            logits, self._past = self.port.step(new[:, None], past, self._cross, beams)
        self._sequences = sequences
        scores = functional.log_softmax(logits[:, -1].float(), dim=-1)
        vocabulary = scores.shape[-1]
        length, size = sequences.shape[1], self.ngram
        if size > 0 and length >= size:
            count = length - size + 1
            match = torch.ones(rows, count, dtype=torch.bool, device=self.device)
            for m in range(size - 1):
                match &= sequences[:, m:m + count] == sequences[:, count + m:count + m + 1]
            banned = torch.where(match, sequences[:, size - 1:], vocabulary)
            padded = torch.cat([scores, scores.new_full((rows, 1), FORBIDDEN)], dim=1)
            scores = padded.scatter(1, banned, FORBIDDEN)[:, :vocabulary]
        keep, penalty = (torch.from_numpy(v).to(self.device) for v in step_rules(vocabulary, self.eos, eos_banned,
                                                                                   forced_token))
        scores = scores * keep + penalty
        scores = scores + torch.from_numpy(np.asarray(beam_scores, np.float32)).to(self.device)[:, None]
        top = scores.reshape(-1, beams * vocabulary).topk(2 * beams, dim=-1)
        indices = top.indices.cpu().numpy()
        return top.values.cpu().numpy(), indices // vocabulary, indices % vocabulary
