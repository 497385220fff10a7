"""The two interfaces of the 2D segmenter: :class:`MaskProvider` and :class:`Embedder`.

An image prompt reaches an embedder as an :class:`ImageRegion` (the reference image, the prompted
region and, for embedders that cannot see pixels, the scene it may name the region from) through
:meth:`Embedder.embed_region`: image embedders crop and embed the pixels; the offline ``labels``
embedder resolves the region to a dataset object of one of the scene's frames (oracle-2D protocol).

Both carry ``model_id`` (which weights) and ``params`` (settings that change the output): the per-view
cache is keyed by them, so a change in either is a cache miss. Heavy libraries (torch models, sam2,
open_clip, transformers) are imported inside the concrete classes, never at ``import cos3d.vision``.
"""

from __future__ import annotations

import abc
import hashlib
import os
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from cos3d.core.errors import Cos3dError

if TYPE_CHECKING:  # pragma: no cover
    import torch

    from cos3d.data.scene import Frame, Scene
    from cos3d.vision.masks import MaskSet


class MaskProvider(abc.ABC):
    """Class-agnostic masks of one image at levels s/m/l."""

    name: str = ""
    """Registry name (``sam2``, ``dataset``, ``classical``)."""

    @property
    @abc.abstractmethod
    def model_id(self) -> str:
        """Identifies the weights/algorithm (part of the cache key)."""

    @property
    def params(self) -> dict[str, Any]:
        """JSON-able settings that change the output (part of the cache key)."""
        return {}

    def frame_key(self, frame: "Frame") -> str:
        """A hash of what this provider reads of ``frame`` besides its colour image ("" when nothing):
        part of the view's cache key, so that edited inputs miss the cache."""
        return ""

    @abc.abstractmethod
    def generate(self, image: np.ndarray, frame: "Frame | None" = None) -> "MaskSet":
        """Masks of ``image`` (uint8 ``[H, W, 3]``). ``frame`` is required by providers that read
        dataset maps (``dataset``) and ignored by the others."""


@dataclass(frozen=True)
class ImageRegion:
    """An image prompt resolved to a region of a reference image: what :meth:`Embedder.embed_region` embeds."""

    image: np.ndarray
    """uint8 ``[H, W, 3]`` reference image."""
    mask: np.ndarray
    """bool ``[H, W]`` prompted region (:func:`cos3d.vision.prompts.prompt_mask`)."""
    path: Path | None = None
    """The file the image was read from, when it came from one."""
    scene: "Scene | None" = None
    """The scene being queried: embedders that see no pixels (``labels``) name the region from it."""
    part: bool = False
    """The prompt asks for a part (a hierarchical query on the part level), not a whole object."""


class Embedder(abc.ABC):
    """Maps masks, texts and image prompts into one unit-norm embedding space of width :attr:`dim`."""

    name: str = ""
    """Registry name (``openclip``, ``siglip``, ``labels``, ``labels-gap``)."""
    dim: int
    mask_embeddings_are_text: bool = False
    """Whether a mask's embedding is in the modality of a text query (``labels``: both embed names) rather than
    an image embedding (CLIP, SigLIP, the modality-gap stand-in). The query engine's calibrations read it
    (:func:`cos3d.query.notarget.calibrate`): when False, their known positives are text words scored against
    the field like a user's query, never the mask embeddings themselves (issue 26)."""

    @property
    @abc.abstractmethod
    def model_id(self) -> str:
        """Identifies the weights (part of the cache key)."""

    @property
    def params(self) -> dict[str, Any]:
        """JSON-able settings that change mask embeddings (part of the cache key)."""
        return {}

    @abc.abstractmethod
    def embed_masks(self, image: np.ndarray, masks: "MaskSet") -> np.ndarray:
        """``[M, D]`` float32 unit rows, one per mask of ``masks`` (image uint8 ``[H, W, 3]``)."""

    @abc.abstractmethod
    def embed_text(self, texts: list[str]) -> "torch.Tensor":
        """``[T, D]`` float32 torch tensor (CPU), unit rows."""

    @abc.abstractmethod
    def embed_image_prompt(
        self, image: np.ndarray, mask: np.ndarray, *, names: list[str] | None = None
    ) -> "torch.Tensor":
        """``[D]`` float32 unit torch tensor for the region ``mask`` (bool ``[H, W]``) of ``image``.

        ``names`` is a hint used only by embedders that embed names (``labels``); image embedders ignore it.
        """

    def embed_region(self, region: ImageRegion) -> "tuple[torch.Tensor, str]":
        """``([D] float32 unit embedding, note)`` of an image-prompt region, used like a text embedding.

        Image embedders embed the region's pixels (:meth:`embed_image_prompt`) and return an empty
        note; embedders that see no pixels override this and say in the note how they named the region.
        """
        import torch

        return torch.as_tensor(self.embed_image_prompt(region.image, region.mask)).float(), ""


class CropEmbedder(Embedder):
    """An image-text model that embeds a mask as the crop of its region (zero pixels outside
    the mask, crop the box, pad to square, resize): OpenCLIP and SigLIP.

    Subclasses set ``crop_size`` and ``_text_cache = {}`` and implement ``_encode_crops(crops) ->
    [M, D]`` and ``_encode_text(texts) -> [T, D]`` (unit rows, CPU tensors)."""

    crop_size: int
    _text_cache: dict[str, np.ndarray]

    @property
    def params(self) -> dict[str, Any]:
        return {"crop": "zero-outside/box/pad-square", "size": self.crop_size}

    @abc.abstractmethod
    def _encode_crops(self, crops: list) -> "torch.Tensor":
        """``[M, D]`` unit rows (CPU) for square crops."""

    @abc.abstractmethod
    def _encode_text(self, texts: list[str]) -> "torch.Tensor":
        """``[T, D]`` unit rows (CPU), no caching."""

    def embed_masks(self, image: np.ndarray, masks: "MaskSet") -> np.ndarray:
        from cos3d.vision.crops import mask_crops

        image = check_image(image)
        check_masks_match(image, masks)
        if len(masks) == 0:
            return np.zeros((0, self.dim), np.float32)
        crops = mask_crops(image, masks.masks, self.crop_size, boxes=masks.box)
        return self._encode_crops(crops).numpy().astype(np.float32)

    def embed_text(self, texts: list[str]) -> "torch.Tensor":
        import torch

        if isinstance(texts, str):
            texts = [texts]
        missing = [t for t in dict.fromkeys(texts) if t not in self._text_cache]
        if missing:
            for t, e in zip(missing, self._encode_text(missing).numpy()):
                self._text_cache[t] = e
        if not texts:
            return torch.zeros(0, self.dim)
        return torch.from_numpy(np.stack([self._text_cache[t] for t in texts]).astype(np.float32))

    def embed_image_prompt(
        self, image: np.ndarray, mask: np.ndarray, *, names: list[str] | None = None
    ) -> "torch.Tensor":
        from cos3d.vision.crops import mask_crops

        image = check_image(image, "reference image")
        mask = np.asarray(mask, dtype=bool)
        if mask.shape != image.shape[:2] or not mask.any():
            raise Cos3dError(
                f"image prompt mask must be a non-empty bool [H, W] matching the image {image.shape[:2]}, "
                f"got {mask.shape}"
            )
        return self._encode_crops(mask_crops(image, mask[None], self.crop_size))[0]


# ---- helpers shared by the concrete classes ---------------------------------------------------------
def check_image(image: Any, what: str = "image") -> np.ndarray:
    """Validate a uint8 ``[H, W, 3]`` image (raises :class:`Cos3dError` naming the actual shape/dtype)."""
    arr = np.asarray(image)
    if arr.ndim != 3 or arr.shape[2] != 3:
        raise Cos3dError(f"{what} must be an RGB array [H, W, 3], got shape {arr.shape}")
    if arr.dtype != np.uint8:
        raise Cos3dError(f"{what} must be uint8 (0..255), got dtype {arr.dtype}")
    if arr.shape[0] < 1 or arr.shape[1] < 1:
        raise Cos3dError(f"{what} is empty: shape {arr.shape}")
    return np.ascontiguousarray(arr)


def check_masks_match(image: np.ndarray, masks: "MaskSet") -> None:
    if masks.shape != image.shape[:2]:
        raise Cos3dError(
            f"masks are {masks.shape[1]}x{masks.shape[0]} but the image is {image.shape[1]}x{image.shape[0]}"
        )


def resolve_device(device: str | None = "auto") -> str:
    """:func:`cos3d.core.device.resolve_device` as a string (what the model libraries take)."""
    from cos3d.core.device import resolve_device as _resolve

    return str(_resolve(device))


def file_fingerprint(path: str | os.PathLike, chunk: int = 1 << 20) -> str:
    """A cheap content fingerprint of a (possibly multi-GB) weights file: size + first and last MiB.

    A folder (a transformers model directory) is fingerprinted by its files' names, sizes and heads.
    """
    p = Path(path)
    h = hashlib.sha1()
    files = sorted(q for q in p.rglob("*") if q.is_file()) if p.is_dir() else [p]
    for f in files:
        size = f.stat().st_size
        h.update(f"{f.relative_to(p) if p.is_dir() else f.name}:{size}".encode())
        with open(f, "rb") as fh:
            h.update(fh.read(chunk))
            if size > chunk:
                fh.seek(max(size - chunk, chunk))
                h.update(fh.read(chunk))
    return h.hexdigest()[:16]


def check_prompt_lengths(texts: list[str], count_tokens: "Any", limit: int, encoder: str) -> None:
    """Raise one :class:`Cos3dError` line for the first of ``texts`` longer than the text encoder's
    ``limit`` in tokens (``count_tokens(text)``, special tokens included), instead of letting the
    tokenizer cut it silently. The line gives the limit, the prompt's length and its first words."""
    for t in texts:
        if len(t.encode("utf-8")) + 2 <= limit:  # every token covers at least one byte: cannot overflow
            continue
        n = int(count_tokens(t))
        if n > limit:
            head = " ".join(t[:60].split())
            if len(t) > 60:
                head = (head.rsplit(" ", 1)[0] if " " in head else head[:40]) + " ..."
            raise Cos3dError(
                f"prompt too long for the {encoder} text encoder: {n:,} tokens ({len(t):,} characters), "
                f"the limit is {limit} tokens; shorten it (prompt: {head!r})"
            )


def unit_rows(x: np.ndarray) -> np.ndarray:
    """L2-normalise rows (zero rows stay zero), float32."""
    x = np.asarray(x, dtype=np.float32)
    n = np.linalg.norm(x, axis=-1, keepdims=True)
    return (x / np.maximum(n, 1e-12)).astype(np.float32)
