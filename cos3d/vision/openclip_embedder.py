"""OpenCLIP embedder: mask crops and texts in CLIP's joint space (default ViT-B-16 / laion2b_s34b_b88k, 512-d).

Weights come from an open_clip pretrained tag (downloaded from the hub on first use) or from a local
checkpoint file (``--clip-checkpoint PATH`` / ``$COS3D_CLIP_CHECKPOINT``). When neither can be had,
:class:`~cos3d.core.errors.MissingWeightsError` says so and names the offline alternative.
"""

from __future__ import annotations

import contextlib
import logging
import os
from pathlib import Path
from typing import TYPE_CHECKING, Iterator

import numpy as np

from cos3d.core.errors import Cos3dError, MissingWeightsError, brief
from cos3d.vision.base import CropEmbedder, file_fingerprint, resolve_device
from cos3d.vision.crops import crops_to_tensor

if TYPE_CHECKING:  # pragma: no cover
    import torch

    from cos3d.vision.masks import MaskSet

DEFAULT_CLIP_MODEL = "ViT-B-16"
DEFAULT_CLIP_PRETRAINED = "laion2b_s34b_b88k"
ENV_CLIP_CHECKPOINT = "COS3D_CLIP_CHECKPOINT"
ENV_CLIP_MODEL = "COS3D_CLIP_MODEL"

OFFLINE_HINT = (
    "pass --clip-checkpoint PATH (or set $COS3D_CLIP_CHECKPOINT) to a local open_clip checkpoint of this "
    "architecture, or run offline with --embedder labels and --masks dataset (the oracle-2D protocol)"
)


def resolve_clip_model_name(model: str | None) -> str:
    """A built-in open_clip architecture name, or a path to a model-config JSON (registered on the fly)."""
    import open_clip

    name = model or os.environ.get(ENV_CLIP_MODEL) or DEFAULT_CLIP_MODEL
    p = Path(name)
    if name.endswith(".json") and p.is_file():
        open_clip.add_model_config(p)
        name = p.stem
    if name not in open_clip.list_models():
        close = [m for m in open_clip.list_models() if name.lower()[:5] in m.lower()][:8]
        raise Cos3dError(
            f"unknown OpenCLIP architecture {name!r} (--clip-model); "
            f"e.g. {', '.join(close or open_clip.list_models()[:8])}; "
            "or pass a model-config .json file"
        )
    return name


@contextlib.contextmanager
def _quiet_root_errors() -> Iterator[None]:
    """Hold back ERROR records of the root logger (open_clip's ``logging.error`` on a failed download): a
    missing-weights failure then reads as cos3d's one line, not two."""
    root = logging.getLogger()
    old = root.level
    root.setLevel(logging.CRITICAL)
    try:
        yield
    finally:
        root.setLevel(old)


class OpenCLIPEmbedder(CropEmbedder):
    """Mask crops → CLIP image embeddings; texts → CLIP text embeddings (unit rows, same space)."""

    name = "openclip"

    def __init__(
        self,
        model: str | None = None,
        pretrained: str | None = DEFAULT_CLIP_PRETRAINED,
        checkpoint: str | os.PathLike | None = None,
        *,
        device: str | None = "auto",
        batch_size: int = 64,
        fp16: bool | None = None,
    ) -> None:
        """
        Args:
            model: open_clip architecture (``ViT-B-16``; ``$COS3D_CLIP_MODEL``) or a model-config JSON path.
            pretrained: open_clip pretrained tag, used when no checkpoint is given.
            checkpoint: local checkpoint file (state dict); default ``$COS3D_CLIP_CHECKPOINT``.
            device: ``auto`` (CUDA when available), ``cpu``, ``cuda``, ...
            batch_size: crops per forward pass.
            fp16: half precision; default True on CUDA, False on CPU.
        """
        import open_clip
        import torch

        self.arch = resolve_clip_model_name(model)
        ckpt = checkpoint if checkpoint is not None else os.environ.get(ENV_CLIP_CHECKPOINT) or None
        self.device = resolve_device(device)
        self.fp16 = (self.device.startswith("cuda")) if fp16 is None else bool(fp16)
        self.batch_size = int(batch_size)
        if ckpt is not None:
            ckpt = Path(ckpt)
            if not ckpt.is_file():
                raise MissingWeightsError(
                    f"OpenCLIP checkpoint {ckpt} does not exist (--clip-checkpoint / ${ENV_CLIP_CHECKPOINT})"
                )
            source = str(ckpt)
            self._weights = f"ckpt-{file_fingerprint(ckpt)}"
        else:
            if not pretrained:
                raise MissingWeightsError(
                    f"OpenCLIP {self.arch}: no weights requested (no pretrained tag, no checkpoint); refusing to run a "
                    f"randomly initialised model; {OFFLINE_HINT}"
                )
            source = pretrained
            self._weights = pretrained
        try:
            with _quiet_root_errors():  # open_clip logs a failed download on the root logger; ours is the one line
                model_ = open_clip.create_model(
                    self.arch,
                    pretrained=source,
                    device=self.device,
                    require_pretrained=True,
                    pretrained_text=False,
                )
        except RuntimeError as e:
            msg = str(e)
            if ckpt is not None and ("state_dict" in msg or "size mismatch" in msg or "Missing key" in msg):
                raise Cos3dError(
                    f"OpenCLIP checkpoint {ckpt} does not fit architecture {self.arch} (--clip-model): {msg[:300]}"
                ) from None
            if ckpt is None:
                raise MissingWeightsError(
                    f"OpenCLIP weights {self.arch}/{pretrained} could not be downloaded (no hub access?); "
                    f"{OFFLINE_HINT}"
                ) from None
            raise Cos3dError(f"OpenCLIP checkpoint {ckpt} could not be loaded (--clip-checkpoint): {msg[:300]}") from None
        except Exception as e:  # download/network errors come in many types
            if ckpt is None:
                raise MissingWeightsError(
                    f"OpenCLIP weights {self.arch}/{pretrained} could not be downloaded ({type(e).__name__}); "
                    f"{OFFLINE_HINT}"
                ) from None
            raise Cos3dError(
                f"OpenCLIP checkpoint {ckpt} could not be loaded (--clip-checkpoint; {brief(e, 300)})"
            ) from None
        model_.eval()
        if self.fp16:
            model_ = model_.half()
        self.model = model_
        self.tokenizer = open_clip.get_tokenizer(self.arch)
        pp = getattr(model_.visual, "preprocess_cfg", {}) or {}
        self.mean = tuple(pp.get("mean", open_clip.OPENAI_DATASET_MEAN))
        self.std = tuple(pp.get("std", open_clip.OPENAI_DATASET_STD))
        size = getattr(model_.visual, "image_size", 224)
        self.crop_size = int(size[0] if isinstance(size, (tuple, list)) else size)
        with torch.no_grad():
            self.dim = int(self._encode_text(["a"]).shape[1])
        self._text_cache: dict[str, np.ndarray] = {}

    # -- identity --------------------------------------------------------------------------------------
    @property
    def model_id(self) -> str:
        return f"openclip:{self.arch}:{self._weights}"


    # -- encoding --------------------------------------------------------------------------------------
    def _dtype(self) -> "torch.dtype":
        import torch

        return torch.float16 if self.fp16 else torch.float32

    def _encode_crops(self, crops: np.ndarray) -> "torch.Tensor":
        import torch

        outs = []
        with torch.no_grad():
            for i in range(0, crops.shape[0], self.batch_size):
                x = crops_to_tensor(
                    crops[i : i + self.batch_size], self.mean, self.std, device=self.device, dtype=self._dtype()
                )
                f = self.model.encode_image(x).float()
                outs.append(torch.nn.functional.normalize(f, dim=-1).cpu())
        return torch.cat(outs) if outs else torch.zeros(0, self.dim)

    def _encode_text(self, texts: list[str]) -> "torch.Tensor":
        import torch

        from cos3d.vision.base import check_prompt_lengths

        limit = getattr(self.tokenizer, "context_length", None)
        if limit:  # the tokenizer cuts longer prompts silently: refuse them in one line instead
            inner = getattr(self.tokenizer, "tokenizer", None)  # HF-backed open_clip tokenizers

            def count(t: str) -> int:
                if inner is not None:
                    return len(inner(t, verbose=False)["input_ids"])
                return len(self.tokenizer.encode(t)) + 2  # + start/end of text

            check_prompt_lengths(texts, count, int(limit), f"OpenCLIP {self.arch}")
        outs = []
        with torch.no_grad():
            for i in range(0, len(texts), self.batch_size):
                tok = self.tokenizer(texts[i : i + self.batch_size]).to(self.device)
                f = self.model.encode_text(tok).float()
                outs.append(torch.nn.functional.normalize(f, dim=-1).cpu())
        return torch.cat(outs)
