"""BEATs in PyTorch: this project's own port, for the optional ``export`` extra (torch is not needed at
run time, where the ONNX graph of ``models.beats`` runs).

It loads the official checkpoint format (``{'cfg', 'model'[, 'label_dict']}``) and computes what the
official implementation computes in evaluation (see ``models.beats`` for the network, step by step).
It serves as the eager reference the ONNX graphs are checked and timed against, and it can write its
own ONNX export (``export_onnx``) with dynamic batch and length.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from jamcaps_desktop.models.beats import config_of, relative_buckets


class _PosConv(nn.Module):
    """The weight-normalised grouped convolution over time (old-style weight norm over dims 0 and 1)."""

    def __init__(self, dim: int, width: int, groups: int) -> None:
        super().__init__()
        self.width, self.groups = width, groups
        self.weight_v = nn.Parameter(torch.zeros(dim, dim // groups, width))
        self.weight_g = nn.Parameter(torch.ones(1, 1, width))
        self.bias = nn.Parameter(torch.zeros(dim))

    def forward(self, x: Tensor) -> Tensor:  # [B, C, N]
        norm = self.weight_v.pow(2).sum(dim=(0, 1), keepdim=True).sqrt()
        out = nn.functional.conv1d(x, self.weight_g * self.weight_v / norm, self.bias, padding=self.width // 2,
                                   groups=self.groups)
        if self.width % 2 == 0:
            out = out[:, :, :-1]
        return nn.functional.gelu(out)


class _Attention(nn.Module):
    def __init__(self, dim: int, heads: int, gated: bool) -> None:
        super().__init__()
        self.heads, self.head_dim, self.gated = heads, dim // heads, gated
        self.q_proj, self.k_proj = nn.Linear(dim, dim), nn.Linear(dim, dim)
        self.v_proj, self.out_proj = nn.Linear(dim, dim), nn.Linear(dim, dim)
        if gated:
            self.grep_linear = nn.Linear(self.head_dim, 8)
            self.grep_a = nn.Parameter(torch.ones(1, heads, 1, 1))

    def forward(self, x: Tensor, bias: Tensor | None, key_padding: Tensor) -> Tensor:
        batch, tokens, _ = x.shape
        q = self.q_proj(x).view(batch, tokens, self.heads, self.head_dim).transpose(1, 2)   # [B, H, N, d]
        k = self.k_proj(x).view(batch, tokens, self.heads, self.head_dim).transpose(1, 2)
        v = self.v_proj(x).view(batch, tokens, self.heads, self.head_dim).transpose(1, 2)
        scores = (q * self.head_dim ** -0.5) @ k.transpose(-1, -2)
        if bias is not None:
            if self.gated:
                gate = torch.sigmoid(self.grep_linear(q).view(batch, self.heads, tokens, 2, 4).sum(-1))
                gate_a, gate_b = gate[..., :1], gate[..., 1:]
                bias = (gate_a * (gate_b * self.grep_a - 1.0) + 2.0) * bias
            scores = scores + bias
        scores = scores.masked_fill(key_padding[:, None, None, :], torch.finfo(scores.dtype).min / 2)
        out = (scores.softmax(dim=-1) @ v).transpose(1, 2).reshape(batch, tokens, -1)
        return self.out_proj(out)


class _Layer(nn.Module):
    def __init__(self, dim: int, ffn: int, heads: int, gated: bool, alpha: float) -> None:
        super().__init__()
        self.alpha = alpha
        self.self_attn = _Attention(dim, heads, gated)
        self.self_attn_layer_norm = nn.LayerNorm(dim)
        self.fc1, self.fc2 = nn.Linear(dim, ffn), nn.Linear(ffn, dim)
        self.final_layer_norm = nn.LayerNorm(dim)

    def forward(self, x: Tensor, bias: Tensor | None, key_padding: Tensor) -> Tensor:
        x = self.self_attn_layer_norm(x * self.alpha + self.self_attn(x, bias, key_padding))
        inner = nn.functional.gelu(self.fc1(x).float()).type_as(x)  # exact GELU in float32, as the original
        return self.final_layer_norm(x * self.alpha + self.fc2(inner))


class _Encoder(nn.Module):
    def __init__(self, cfg: dict[str, Any]) -> None:
        super().__init__()
        dim, heads = int(cfg["encoder_embed_dim"]), int(cfg["encoder_attention_heads"])
        alpha = math.pow(2 * int(cfg["encoder_layers"]), 0.25) if cfg["deep_norm"] else 1.0
        self.pos_conv = nn.ModuleList([_PosConv(dim, int(cfg["conv_pos"]), int(cfg["conv_pos_groups"]))])
        self.layers = nn.ModuleList(_Layer(dim, int(cfg["encoder_ffn_embed_dim"]), heads, bool(cfg["gru_rel_pos"]),
                                           alpha) for _ in range(int(cfg["encoder_layers"])))
        self.layer_norm = nn.LayerNorm(dim)
        self.relative = bool(cfg["relative_position_embedding"])
        if self.relative:
            self.relative_attention_bias = nn.Embedding(int(cfg["num_buckets"]), heads)
            self.num_buckets, self.max_distance = int(cfg["num_buckets"]), int(cfg["max_distance"])

    def position_bias(self, tokens: int, device: torch.device) -> Tensor:
        offsets = np.arange(tokens)[None, :] - np.arange(tokens)[:, None]
        buckets = torch.from_numpy(relative_buckets(offsets, self.num_buckets, self.max_distance)).to(device)
        return self.relative_attention_bias(buckets).permute(2, 0, 1)               # [H, N, N]

    def forward(self, x: Tensor, padding: Tensor) -> Tensor:
        x = x.masked_fill(padding[..., None], 0.0)
        x = x + self.pos_conv[0](x.transpose(1, 2)).transpose(1, 2)
        x = self.layer_norm(x)
        bias = self.position_bias(x.shape[1], x.device).to(x.dtype) if self.relative else None
        for layer in self.layers:
            x = layer(x, bias, padding)
        return x


class BEATsPort(nn.Module):
    """``forward(fbank [B, T, 128], padding_mask [B, T] bool)`` → dict of ``tokens``, ``token_mask``,
    ``embedding`` and, for fine-tuned checkpoints, ``probs``."""

    def __init__(self, cfg: dict[str, Any]) -> None:
        super().__init__()
        cfg = config_of(cfg)
        self.cfg = cfg
        embed, dim = int(cfg["embed_dim"]), int(cfg["encoder_embed_dim"])
        self.patch_embedding = nn.Conv2d(1, embed, 16, stride=16, bias=bool(cfg["conv_bias"]))
        self.layer_norm = nn.LayerNorm(embed)
        self.post_extract_proj = nn.Linear(embed, dim) if embed != dim else None
        self.encoder = _Encoder(cfg)
        self.predictor = nn.Linear(dim, int(cfg["predictor_class"])) if cfg["finetuned_model"] else None

    @classmethod
    def from_checkpoint(cls, checkpoint: dict[str, Any]) -> BEATsPort:
        """From an official checkpoint as read by ``torch.load`` or by ``models.torch_checkpoint``."""
        model = cls(checkpoint["cfg"])
        model.load_official_state(checkpoint["model"])
        return model.eval()

    def load_official_state(self, state: dict[str, Any]) -> None:
        tensors = {k: torch.as_tensor(np.asarray(v)) if not isinstance(v, Tensor) else v for k, v in state.items()}
        tables = sorted((k for k in tensors if k.endswith("self_attn.relative_attention_bias.weight")),
                        key=lambda k: int(k.split(".")[2]))
        ours = {key: value for key, value in tensors.items() if key not in tables}
        if tables:  # one table for all layers; the official loader leaves the last layer's copy in it
            ours["encoder.relative_attention_bias.weight"] = tensors[tables[-1]]
        missing, unexpected = self.load_state_dict(ours, strict=False)
        if missing or unexpected:
            raise KeyError(f"checkpoint mismatch: missing {missing[:5]}, unexpected {unexpected[:5]}")

    def forward(self, fbank: Tensor, padding_mask: Tensor) -> dict[str, Tensor]:
        x = self.patch_embedding(fbank.unsqueeze(1))                                  # [B, E, T/16, 8]
        x = x.reshape(x.shape[0], x.shape[1], -1).transpose(1, 2)                    # time-major tokens
        x = self.layer_norm(x)
        tokens = x.shape[1]
        frames = padding_mask.shape[1]
        token_mask = padding_mask[:, : frames - frames % tokens].reshape(padding_mask.shape[0], tokens, -1).all(-1)
        if self.post_extract_proj is not None:
            x = self.post_extract_proj(x)
        x = self.encoder(x, token_mask)
        keep = (~token_mask).to(x.dtype)[..., None]
        count = keep.sum(1).clamp(min=1.0)
        out = {"tokens": x, "token_mask": token_mask, "embedding": (x * keep).sum(1) / count}
        if self.predictor is not None:
            out["probs"] = torch.sigmoid((self.predictor(x) * keep).sum(1) / count)
        return out


def export_onnx(model: BEATsPort, path: str, frames: int = 998) -> None:
    """The port's own ONNX export (dynamic batch and frames), for comparing exporters."""
    fbank = torch.zeros(1, frames, 128)
    mask = torch.zeros(1, frames, dtype=torch.bool)
    names = ["probs", "embedding"] if model.predictor is not None else ["embedding"]

    class _Outputs(nn.Module):
        def __init__(self, inner: BEATsPort) -> None:
            super().__init__()
            self.inner = inner

        def forward(self, fbank: Tensor, padding_mask: Tensor) -> tuple[Tensor, ...]:
            result = self.inner(fbank, padding_mask)
            return tuple(result[n] for n in names)

    torch.onnx.export(_Outputs(model), (fbank, mask), path, input_names=["fbank", "padding_mask"],
                      output_names=names, dynamic_axes={"fbank": {0: "batch", 1: "frames"},
                                                        "padding_mask": {0: "batch", 1: "frames"}},
                      opset_version=18, dynamo=False)
