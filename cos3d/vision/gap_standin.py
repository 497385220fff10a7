"""The **modality-gap stand-in** embedder (``labels-gap``): the oracle-2D ``labels`` embedder with a CLIP-like
gap between its image side and its text side (issue 26, item 2). It is a stand-in for testing and
benchmarks, not a model: it sees no pixels (oracle-2D protocol, dataset masks), and its numbers say how the
3D machinery and the presence calibration behave when masks and queries live in different modalities.

Why: with ``labels`` both sides are sentence embeddings of names, so a mask's embedding and its name's are
the same vector. With CLIP/SigLIP a mask is embedded from its pixels and a query from its words: image and
text embeddings sit in two narrow cones apart from each other (the *modality gap*, Liang et al. 2022, "Mind
the Gap: Understanding the Modality Gap in Multi-modal Contrastive Representation Learning", NeurIPS 2022:
the gap is a shared offset between the two modalities' centroids, ``‖Δ‖ = 0.82`` for CLIP on MSCOCO,
their Table 1 "default gap distance"). Image-to-image cosines are then far above any text-to-image one.

Construction (unit vectors in the labels embedder's 384-d space; ``g_i`` and ``h`` are fixed orthonormal
directions, ``g_t = ρ g_i + √(1−ρ²) h``; ``⊥`` removes the span of ``g_i, h`` and renormalises):

- text: ``t' = α t⊥ + β g_t`` where ``t`` is the labels embedding of the text;
- image (a mask, an image prompt): ``i = a (κ e⊥ + √(1−κ²) z⊥) + b g_i + c n⊥``, normalised, where ``e`` is
  the labels embedding of the mask's names, ``z`` a fixed random direction of that object (what the pixels
  show that no word says; the same in every view) and ``n`` fresh noise per mask and view.

So, for a text whose labels cosine with a mask's names is ``s``: ``cos(i, t') ≈ aακ·s + bβρ``; two images
of unrelated objects ``≈ b²``; two views of one object ``≈ 1 − c²``; two unrelated texts ``≈ β²``.
:class:`GapProfile` holds the published levels these are set from and derives ``a, α, κ, ρ``:

``clip-vit-b16`` (default): a text-image **match** 0.31 and **non-match** 0.17 — CLIP ViT-B/16's usual
levels (a matching caption/label rarely scores above ~0.3–0.35 and unrelated ones ~0.15–0.2; Hessel et al.
2021, "CLIPScore", rescale by ``w = 2.5`` because CLIP cosines rarely exceed 0.4; issue 26 quotes the
same ranges); an image cone ``b² = 0.5`` and a text cone ``β² = 0.5`` (unrelated images / texts ≈ 0.5: the
cone effect of Liang et al. 2022, their Fig. 2 histograms of CLIP's intra-modality cosines centre about
there); view noise ``c² = 0.08`` (two crops of one object ≈ 0.92: issue 26's image-to-image 0.8–0.95).
These give ``ρ = 0.34`` and a centroid distance ``√(b² + β² − 2bβρ) = 0.81``, Liang et al.'s 0.82.

``siglip-b16``: SigLIP (Zhai et al. 2023, "Sigmoid Loss for Language Image Pre-Training") scores a pair with
``σ(t·cos + b)``; the released base model's learned ``t ≈ 117``, ``b ≈ −12.9`` put the 50 % point at
``cos ≈ 0.11``, so a match ≈ 0.15 and a non-match ≈ 0.0 here (approximate: read off the released model's
scale and bias, not a table of the paper; not re-checked offline — the same order as the SO400M/14 model's
``exp(4.7215) ≈ 112.3`` that open_clip's maintainers confirm against big_vision in open_clip issue #746); same
cones and noise. The CLIP levels and Liang et al.'s 0.82 are quoted from the papers and were not re-measured
here: no CLIP weights can be loaded offline.

Every name and report of this embedder says "modality-gap stand-in"; its ``model_id`` includes the profile,
so the per-view cache never mixes it with ``labels``.
"""

from __future__ import annotations

import hashlib
import math
from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

from cos3d.vision.base import Embedder, ImageRegion
from cos3d.vision.labels_embedder import LabelsEmbedder

if TYPE_CHECKING:  # pragma: no cover
    import torch

    from cos3d.vision.masks import MaskSet


@dataclass(frozen=True)
class GapProfile:
    """The cosine levels a modality-gap stand-in reproduces (module docstring, with sources)."""

    name: str
    match: float
    """Text-image cosine of a mask and its exact name (labels cosine 1)."""
    nonmatch: float
    """Text-image cosine of a mask and an unrelated text (labels cosine 0)."""
    image_cone: float
    """``b²``: cosine of two images of unrelated objects."""
    text_cone: float
    """``β²``: cosine of two unrelated texts."""
    view_noise: float
    """``c²``: one minus the cosine of two views of one object."""
    source: str = ""

    @property
    def coefficients(self) -> dict[str, float]:
        """``a, b, c, alpha, beta, kappa, rho`` of the construction (module docstring)."""
        b, beta, c = math.sqrt(self.image_cone), math.sqrt(self.text_cone), math.sqrt(self.view_noise)
        a = math.sqrt(max(1.0 - self.image_cone - self.view_noise, 1e-6))
        alpha = math.sqrt(1.0 - self.text_cone)
        kappa = min((self.match - self.nonmatch) / (a * alpha), 1.0)
        rho = self.nonmatch / (b * beta)
        return {"a": a, "b": b, "c": c, "alpha": alpha, "beta": beta, "kappa": kappa, "rho": rho}

    @property
    def gap_distance(self) -> float:
        """Distance between the image and text centroids (Liang et al. 2022 report 0.82 for CLIP)."""
        k = self.coefficients
        return math.sqrt(k["b"] ** 2 + k["beta"] ** 2 - 2 * k["b"] * k["beta"] * k["rho"])


PROFILES: dict[str, GapProfile] = {
    "clip-vit-b16": GapProfile("clip-vit-b16", match=0.31, nonmatch=0.17, image_cone=0.5, text_cone=0.5,
                               view_noise=0.08,
                               source="CLIP ViT-B/16 levels (CLIPScore, Hessel et al. 2021; issue 26); cones and "
                                      "gap: Liang et al. 2022 'Mind the Gap' (gap 0.82)"),
    "siglip-b16": GapProfile("siglip-b16", match=0.15, nonmatch=0.0, image_cone=0.5, text_cone=0.5, view_noise=0.08,
                             source="SigLIP base (Zhai et al. 2023): sigmoid 50 % point at cos ~0.11 from the released "
                                    "logit scale ~117 and bias ~-12.9 (approximate)"),
}
"""The stand-in's profiles by name (module docstring)."""


def _seed_of(*parts: bytes) -> int:
    h = hashlib.sha1()
    for p in parts:
        h.update(p)
    return int.from_bytes(h.digest()[:8], "little")


class ModalityGapStandIn(Embedder):
    """``labels-gap``: the modality-gap stand-in (module docstring). Wraps a :class:`LabelsEmbedder`."""

    name = "labels-gap"
    mask_embeddings_are_text = False
    """Its masks are "images": presence and the other rules calibrate on text words (:mod:`cos3d.query.notarget`)."""

    def __init__(self, model_dir: str | None = None, *, batch_size: int = 256,
                 profile: str | GapProfile = "clip-vit-b16", seed: int = 0, labels: LabelsEmbedder | None = None) -> None:
        self.labels = labels if labels is not None else LabelsEmbedder(model_dir, device="cpu", batch_size=batch_size)
        if isinstance(profile, str):
            if profile not in PROFILES:
                from cos3d.core.errors import Cos3dError

                raise Cos3dError(f"unknown modality-gap profile {profile!r}; choose one of {', '.join(PROFILES)}")
            profile = PROFILES[profile]
        self.profile = profile
        self.seed = int(seed)
        self.dim = self.labels.dim
        self.k = profile.coefficients
        rng = np.random.default_rng(np.random.SeedSequence([self.seed, 2026]))
        q, _ = np.linalg.qr(rng.standard_normal((self.dim, 2)))
        self.g_img = q[:, 0].astype(np.float64)
        h = q[:, 1].astype(np.float64)
        rho = self.k["rho"]
        self.g_txt = rho * self.g_img + math.sqrt(max(1 - rho * rho, 0.0)) * h
        self._basis = q.astype(np.float64)  # [D, 2]: the span removed from the semantic parts

    # ------------------------------------------------------------------ identity
    @property
    def model_id(self) -> str:
        return f"labels-gap:{self.profile.name}:seed{self.seed}:{self.labels.model_id}"

    @property
    def params(self) -> dict[str, Any]:
        return {"stand_in": "modality-gap", **asdict(self.profile), "seed": self.seed}

    # ------------------------------------------------------------------ the two sides
    def _perp(self, x: np.ndarray) -> np.ndarray:
        x = np.asarray(x, np.float64)
        x = x - (x @ self._basis) @ self._basis.T
        return x / np.maximum(np.linalg.norm(x, axis=-1, keepdims=True), 1e-12)

    def text_side(self, t: np.ndarray) -> np.ndarray:
        """``[T, D]`` text embeddings from labels embeddings ``t`` (unit rows)."""
        out = self.k["alpha"] * self._perp(t) + self.k["beta"] * self.g_txt
        return (out / np.linalg.norm(out, axis=-1, keepdims=True)).astype(np.float32)

    def image_side(self, e: np.ndarray, noise_seed: int | None = 0) -> np.ndarray:
        """``[M, D]`` image embeddings of masks whose names embed (labels) to ``e [M, D]``; ``noise_seed``: the
        view noise's seed (None: no view noise, the object's mean over views)."""
        e = np.atleast_2d(np.asarray(e, np.float64))
        k = self.k
        z = np.stack([np.random.default_rng(_seed_of(b"obj", str(self.seed).encode(),
                                                     np.round(row, 4).astype(np.float32).tobytes())).standard_normal(self.dim)
                      for row in e]) if len(e) else np.zeros((0, self.dim))
        sem = k["kappa"] * self._perp(e) + math.sqrt(max(1 - k["kappa"] ** 2, 0.0)) * self._perp(z)
        out = k["a"] * sem + k["b"] * self.g_img
        if noise_seed is not None and len(e):
            n = np.random.default_rng(noise_seed).standard_normal((len(e), self.dim))
            out = out + k["c"] * self._perp(n)
        return (out / np.maximum(np.linalg.norm(out, axis=-1, keepdims=True), 1e-12)).astype(np.float32)

    # ------------------------------------------------------------------ Embedder
    def embed_masks(self, image: np.ndarray, masks: "MaskSet") -> np.ndarray:
        e = self.labels.embed_masks(image, masks)
        if len(e) == 0:
            return e
        seed = _seed_of(b"view", str(self.seed).encode(), np.ascontiguousarray(image).tobytes(),
                        np.ascontiguousarray(masks.masks).tobytes())
        return self.image_side(e, seed)

    def embed_text(self, texts: list[str]) -> "torch.Tensor":
        import torch

        if isinstance(texts, str):
            texts = [texts]
        t = self.labels.embed_text(list(texts)).numpy()
        if len(t) == 0:
            return torch.zeros(0, self.dim)
        return torch.from_numpy(self.text_side(t))

    def embed_image_prompt(self, image: np.ndarray, mask: np.ndarray, *, names: list[str] | None = None
                           ) -> "torch.Tensor":
        import torch

        e = self.labels.embed_image_prompt(image, mask, names=names).numpy()
        seed = _seed_of(b"prompt", np.ascontiguousarray(image).tobytes(), np.ascontiguousarray(mask).tobytes())
        return torch.from_numpy(self.image_side(e[None], seed)[0])

    def embed_region(self, region: ImageRegion) -> "tuple[torch.Tensor, str]":
        import torch

        emb, note = self.labels.embed_region(region)
        seed = _seed_of(b"prompt", np.ascontiguousarray(region.image).tobytes(),
                        np.ascontiguousarray(region.mask).tobytes())
        return torch.from_numpy(self.image_side(emb.numpy()[None], seed)[0]), f"{note} (modality-gap stand-in)"
