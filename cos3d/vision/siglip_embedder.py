"""SigLIP embedder (transformers ``AutoModel`` + ``AutoProcessor``): the same mask crop as OpenCLIP.

The model comes from a hub id (default ``google/siglip-base-patch16-224``, 768-d) or a local folder
written by ``save_pretrained`` (``--siglip-model DIR`` / ``$COS3D_SIGLIP_MODEL``).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from cos3d.core.errors import Cos3dError, MissingWeightsError, brief
from cos3d.vision.base import CropEmbedder, file_fingerprint, resolve_device
from cos3d.vision.crops import crops_to_tensor

if TYPE_CHECKING:  # pragma: no cover
    import torch

    from cos3d.vision.masks import MaskSet

DEFAULT_SIGLIP_MODEL = "google/siglip-base-patch16-224"
ENV_SIGLIP_MODEL = "COS3D_SIGLIP_MODEL"


def _features(out: Any) -> "torch.Tensor":
    """transformers 4 returns a tensor from ``get_*_features``; transformers 5 a model output."""
    import torch

    if isinstance(out, torch.Tensor):
        return out
    for key in ("pooler_output", "text_embeds", "image_embeds"):
        v = getattr(out, key, None)
        if isinstance(v, torch.Tensor):
            return v
    raise TypeError(f"unexpected SigLIP output type {type(out).__name__}")


class SiglipEmbedder(CropEmbedder):
    """Mask crops → SigLIP image embeddings; texts → SigLIP text embeddings (unit rows)."""

    name = "siglip"

    def __init__(
        self,
        model: str | os.PathLike | None = None,
        *,
        device: str | None = "auto",
        batch_size: int = 64,
        fp16: bool | None = None,
    ) -> None:
        """
        Args:
            model: hub id or local ``save_pretrained`` folder; default ``$COS3D_SIGLIP_MODEL``, else
                ``google/siglip-base-patch16-224``.
        """
        import torch
        from transformers import AutoModel, AutoProcessor

        from cos3d.vision.sam2_hf import _looks_local

        src = str(model or os.environ.get(ENV_SIGLIP_MODEL) or DEFAULT_SIGLIP_MODEL)
        self.source = src
        path = Path(src).expanduser()
        local = path.is_dir()
        self.device = resolve_device(device)
        self.fp16 = self.device.startswith("cuda") if fp16 is None else bool(fp16)
        self.batch_size = int(batch_size)
        hint = (
            "pass --siglip-model DIR (or set $COS3D_SIGLIP_MODEL) to a local folder written by save_pretrained, "
            "or run offline with --embedder labels and --masks dataset (the oracle-2D protocol)"
        )
        if not local and (path.exists() or _looks_local(src)):  # a path, not a hub id: say what is wrong with it
            what = "is a file, not a save_pretrained folder" if path.exists() else "does not exist"
            raise MissingWeightsError(f"SigLIP model folder {src} {what} (--siglip-model); {hint}")
        where = str(path) if local else src
        try:
            self.model = AutoModel.from_pretrained(where)  # (dtype keyword differs across transformers 4/5)
            self.processor = AutoProcessor.from_pretrained(where)
        except (OSError, ValueError) as e:
            if local:
                raise Cos3dError(f"SigLIP folder {src} could not be loaded ({brief(e, 200)}); {hint}") from None
            raise MissingWeightsError(
                f"SigLIP weights {src!r} are not available: no such folder, and not in the hub cache (no hub access?); "
                f"{hint}"
            ) from None
        if not hasattr(self.model, "get_image_features") or not hasattr(self.model, "get_text_features"):
            raise Cos3dError(
                f"{src} is a {type(self.model).__name__}, not a SigLIP/CLIP-style dual encoder (--siglip-model)"
            )
        self.model.to(self.device, dtype=torch.float16 if self.fp16 else torch.float32).eval()
        self._weights = f"local-{file_fingerprint(path)}" if local else src
        ip = self.processor.image_processor
        self.mean = tuple(ip.image_mean)
        self.std = tuple(ip.image_std)
        self.crop_size = int(self.model.config.vision_config.image_size)
        tok = self.processor.tokenizer
        self.max_length = int(min(getattr(tok, "model_max_length", 64) or 64, 64))
        self.dim = int(self._encode_text(["a"]).shape[1])
        self._text_cache: dict[str, np.ndarray] = {}

    @property
    def model_id(self) -> str:
        return f"siglip:{self._weights}"


    def _encode_crops(self, crops: np.ndarray) -> "torch.Tensor":
        import torch

        outs = []
        dtype = torch.float16 if self.fp16 else torch.float32
        with torch.no_grad():
            for i in range(0, crops.shape[0], self.batch_size):
                x = crops_to_tensor(
                    crops[i : i + self.batch_size], self.mean, self.std, device=self.device, dtype=dtype
                )
                f = _features(self.model.get_image_features(pixel_values=x)).float()
                outs.append(torch.nn.functional.normalize(f, dim=-1).cpu())
        return torch.cat(outs) if outs else torch.zeros(0, self.dim)

    def _encode_text(self, texts: list[str]) -> "torch.Tensor":
        import torch

        from cos3d.vision.base import check_prompt_lengths

        tok = self.processor.tokenizer
        check_prompt_lengths(  # the tokenizer would truncate longer prompts silently
            texts, lambda t: len(tok(t, verbose=False)["input_ids"]), self.max_length, f"SigLIP {self.source}"
        )
        outs = []
        with torch.no_grad():
            for i in range(0, len(texts), self.batch_size):
                # SigLIP was trained on max-length padded text
                enc = self.processor.tokenizer(
                    texts[i : i + self.batch_size],
                    padding="max_length",
                    max_length=self.max_length,
                    truncation=True,
                    return_tensors="pt",
                )
                enc = {k: v.to(self.device) for k, v in enc.items() if k in ("input_ids", "attention_mask")}
                f = _features(self.model.get_text_features(**enc)).float()
                outs.append(torch.nn.functional.normalize(f, dim=-1).cpu())
        return torch.cat(outs)
