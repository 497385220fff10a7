"""No-target detection: a per-scene calibrated threshold on raw LERF relevancy.

COS3D's normalised relevancy (min-max, then ``clip(2r − 1, 0, 1)``) always selects something, so an
absent object ("elephant" on a tabletop) would return whatever is least irrelevant. We decide
presence on the **raw** relevancy ``R`` (:func:`cos3d.query.relevancy.raw_relevancy`) instead.

Statistic. For a prompt embedding ``p``: ``s(p)`` = the mean of the ``k = 32`` largest raw ``R`` over the
Gaussians with opacity > 0.1 (within the parent for hierarchical queries). A mean of the top 32 rather
than the maximum keeps one odd Gaussian from deciding.

Calibration (per scene and level, computed once by the engine, :func:`calibrate`):

- **Known positives**: the level's Ins2Lang targets ``c_j`` (the embeddings of masks seen in training,
  i.e. things that are in the scene), de-duplicated (cos > 0.995) and capped at 64 by farthest-point
  sampling; ``P = {s(c_j)}``.
- **Known negatives**: a shipped vocabulary of common object names (:data:`NEGATIVE_VOCABULARY`, ~190
  words), embedded by the scene's embedder, minus the words too close to any target: cosine > 0.6, or a
  similarity more than 2.5 standard deviations above that target's mean similarity over the vocabulary
  (so "cup" is not a negative in a scene with a mug, whatever the embedding space's scale);
  ``Q = {s(n)}``.
- **Threshold**, in logit space ``λ = logit(s)``: with ``p_lo`` = the 10th percentile of ``λ(P)`` and
  ``q_hi`` = the 95th percentile of ``λ(Q)``, ``τ = q_hi + 0.15 (p_lo − q_hi)`` when they are separated
  (closer to the negatives, because a paraphrase like "cup" scores below the exact training embedding),
  else the midpoint of the split that maximises balanced accuracy on ``P ∪ Q``.

A prompt is answered as **absent** when ``s(p) < sigmoid(τ)``; the answer is then empty and its
``reason`` names the score and the threshold. A hierarchical prompt ("head" within "robot") is decided on
the part level's calibration over the whole scene, and must also reach, inside the parent's Gaussians, the
negatives' 95th percentile (``floor``: at least as relevant as a typical absent name) — the parent's
selection may miss a sliver of the part, so the scene-wide test is the main one. The calibration (threshold, score distributions, counts)
is kept on the engine (:attr:`QueryEngine.calibration`) and reported in JSON output.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Iterable

import numpy as np
import torch
from torch import Tensor

from cos3d.query.relevancy import raw_relevancy

TOP_K = 32
OPACITY_MIN = 0.1
MARGIN = 0.15

NEGATIVE_VOCABULARY: tuple[str, ...] = (
    # animals
    "elephant", "giraffe", "zebra", "horse", "cow", "sheep", "dog", "cat", "bird", "lion", "tiger",
    "bear", "monkey", "kangaroo", "penguin", "dolphin", "shark", "snake", "frog", "butterfly", "spider",
    "camel", "deer", "rabbit", "squirrel",
    # vehicles and outdoor things
    "car", "bicycle", "motorcycle", "bus", "truck", "train", "airplane", "helicopter", "boat", "ship",
    "tractor", "traffic light", "fire hydrant", "stop sign", "parking meter", "street lamp", "bridge",
    "tree", "flower", "grass", "mountain", "river", "cloud", "sun", "moon", "rainbow", "snow",
    # furniture and rooms
    "sofa", "bed", "wardrobe", "bathtub", "toilet", "sink", "shower", "refrigerator", "oven",
    "microwave", "dishwasher", "washing machine", "fireplace", "staircase", "window", "door", "curtain",
    "carpet", "ceiling fan", "chandelier", "bookshelf", "armchair", "bench", "piano", "guitar", "drum",
    "violin", "trumpet",
    # electronics
    "laptop", "computer monitor", "keyboard", "computer mouse", "television", "smartphone", "camera",
    "headphones", "printer", "router", "remote control", "game controller", "speaker", "microphone",
    "projector", "calculator", "hair dryer", "vacuum cleaner", "light bulb", "power drill",
    # clothing and accessories
    "shoe", "boot", "sock", "hat", "helmet", "glove", "scarf", "jacket", "shirt", "dress", "trousers",
    "belt", "necklace", "ring", "watch", "sunglasses", "umbrella", "backpack", "handbag", "suitcase",
    "wallet", "tie",
    # food
    "pizza", "hamburger", "hot dog", "sandwich", "cake", "donut", "ice cream", "chocolate", "cookie",
    "broccoli", "carrot", "tomato", "potato", "onion", "corn", "watermelon", "pineapple", "grapes",
    "strawberry", "cherry", "banana", "orange", "apple", "pear", "peach", "sushi", "egg", "cheese",
    "steak", "noodles", "rice",
    # tools and household objects
    "hammer", "screwdriver", "wrench", "saw", "axe", "shovel", "scissors", "knife", "fork", "spoon",
    "chopsticks", "toothbrush", "comb", "soap", "towel", "pillow", "blanket", "candle", "vase", "clock",
    "mirror", "picture frame", "lamp", "fan", "broom", "bucket", "ladder", "rope", "chain", "key",
    "lock", "coin", "envelope", "newspaper", "pencil", "pen", "eraser", "ruler", "stapler", "tape",
    "paint brush", "globe", "map", "flag", "kite", "balloon", "teddy bear", "doll", "skateboard",
    "surfboard", "skis", "tennis racket", "baseball bat", "frisbee", "basketball", "golf club",
    "trophy", "telescope", "microscope", "syringe", "stethoscope", "wheelchair", "crutch",
    "fire extinguisher", "trash can", "mailbox", "birdcage", "aquarium", "tent", "sleeping bag",
)
"""Common object names used as known negatives (written for cos3d; filtered per scene)."""


def check_held_out(prompts: Iterable[str], vocabulary: Iterable[str] = NEGATIVE_VOCABULARY) -> None:
    """Raise :class:`~cos3d.errors.Cos3dError` when an evaluation prompt is a calibration word (case and
    spacing aside): a no-target accuracy measured on the calibration set would overstate it."""
    from cos3d.errors import Cos3dError

    def norm(t: str) -> str:
        return " ".join(t.lower().split())

    vocab = {norm(v) for v in vocabulary}
    clash = sorted({p for p in prompts if norm(p) in vocab})
    if clash:
        raise Cos3dError(f"evaluation prompts overlap the no-target calibration vocabulary: {', '.join(map(repr, clash[:6]))}"
                         f"{' and more' if len(clash) > 6 else ''}; evaluation prompts must be held out")


def top_k_score(R: Tensor, valid: Tensor, k: int = TOP_K) -> Tensor:
    """``[T]``: mean of the ``k`` largest values of each row of ``R [T, N]`` among ``valid [N]``."""
    Rv = R[:, valid] if valid is not None else R
    if Rv.shape[1] == 0:
        return torch.zeros(R.shape[0])
    kk = min(k, Rv.shape[1])
    return torch.topk(Rv, kk, dim=1).values.mean(1)


def _logit(x: np.ndarray | float) -> np.ndarray:
    x = np.clip(np.asarray(x, np.float64), 1e-7, 1 - 1e-7)
    return np.log(x) - np.log1p(-x)


def _fps(X: Tensor, m: int) -> Tensor:
    """Indices of ``m`` farthest-point-sampled unit rows of ``X`` (deterministic, starts at row 0)."""
    idx = [0]
    d = 1 - X @ X[0]
    for _ in range(1, min(m, len(X))):
        i = int(torch.argmax(d))
        idx.append(i)
        d = torch.minimum(d, 1 - X @ X[i])
    return torch.tensor(idx)


@dataclass
class NoTargetCalibration:
    """The calibrated presence threshold of one scene level (see the module docstring)."""

    threshold: float
    """Minimum top-k mean raw relevancy for a prompt to count as present."""
    positive_scores: np.ndarray = field(repr=False)
    negative_scores: np.ndarray = field(repr=False)
    negative_words: list[str] = field(repr=False, default_factory=list)
    dropped_words: list[str] = field(default_factory=list)
    """Vocabulary words left out because they resemble something in the scene."""
    floor: float = 0.5
    """The 95th percentile of the negatives' scores: "as relevant as an absent name". Hierarchical
    queries also need this score inside the parent."""
    method: str = "separated"
    """``separated`` (margin between the classes) or ``balanced`` (overlapping classes)."""
    top_k: int = TOP_K

    def present(self, score: float) -> bool:
        return bool(score >= self.threshold)

    def state_dict(self) -> dict:
        """Tensors and plain values (``torch.load(weights_only=True)`` reads them back)."""
        return {
            "threshold": float(self.threshold),
            "floor": float(self.floor),
            "method": self.method,
            "top_k": int(self.top_k),
            "positive_scores": torch.from_numpy(np.asarray(self.positive_scores, np.float64)),
            "negative_scores": torch.from_numpy(np.asarray(self.negative_scores, np.float64)),
            "negative_words": list(self.negative_words),
            "dropped_words": list(self.dropped_words),
        }

    @classmethod
    def from_state_dict(cls, state: dict) -> "NoTargetCalibration":
        return cls(
            threshold=float(state["threshold"]),
            positive_scores=state["positive_scores"].numpy(),
            negative_scores=state["negative_scores"].numpy(),
            negative_words=list(state["negative_words"]),
            dropped_words=list(state["dropped_words"]),
            floor=float(state["floor"]),
            method=str(state["method"]),
            top_k=int(state["top_k"]),
        )

    def to_dict(self) -> dict:
        return {
            "threshold": float(self.threshold),
            "floor": float(self.floor),
            "statistic": f"mean of the top {self.top_k} raw relevancies over Gaussians with opacity > {OPACITY_MIN}",
            "method": self.method,
            "positives": int(len(self.positive_scores)),
            "negatives": int(len(self.negative_scores)),
            "positive_min": float(self.positive_scores.min()) if len(self.positive_scores) else None,
            "negative_max": float(self.negative_scores.max()) if len(self.negative_scores) else None,
            "dropped_words": list(self.dropped_words),
        }


def choose_threshold(pos: np.ndarray, neg: np.ndarray, margin: float = MARGIN) -> tuple[float, str]:
    """Threshold on scores (in (0, 1)) separating positives ``pos`` from negatives ``neg``."""
    lp, ln = _logit(pos), _logit(neg)
    if len(lp) == 0 or len(ln) == 0:
        # nothing to calibrate against: a fixed, conservative default (R = 0.5: p as relevant as a negative)
        return 0.5, "default"
    p_lo = float(np.percentile(lp, 10))
    q_hi = float(np.percentile(ln, 95))
    if p_lo > q_hi:
        tau = q_hi + margin * (p_lo - q_hi)
        return float(1 / (1 + math.exp(-tau))), "separated"
    # overlapping: maximise balanced accuracy over candidate cut points
    cuts = np.unique(np.concatenate([lp, ln]))
    mids = np.concatenate([[cuts[0] - 1e-3], (cuts[:-1] + cuts[1:]) / 2, [cuts[-1] + 1e-3]])
    best, best_acc = mids[0], -1.0
    for c in mids:
        acc = 0.5 * ((lp >= c).mean() + (ln < c).mean())
        if acc > best_acc:
            best, best_acc = c, acc
    return float(1 / (1 + math.exp(-best))), "balanced"


def filter_vocabulary(
    words: list[str], word_emb: Tensor, targets: Tensor, *, max_cos: float = 0.6, max_z: float = 2.5
) -> tuple[list[int], list[int]]:
    """Indices of kept and dropped ``words`` (see the module docstring)."""
    S = word_emb.float() @ targets.float().T  # [V, J]
    mu = S.mean(0, keepdim=True)
    sd = S.std(0, keepdim=True).clamp_min(1e-6)
    z = (S - mu) / sd
    drop = (S.amax(1) > max_cos) | (z.amax(1) > max_z)
    keep = torch.nonzero(~drop).flatten().tolist()
    dropped = torch.nonzero(drop).flatten().tolist()
    return keep, dropped


def unique_targets(targets: Tensor, *, dedup_cos: float = 0.995, cap: int = 64) -> Tensor:
    """De-duplicated, farthest-point-capped unit target embeddings ``[J', D]``."""
    T = torch.nn.functional.normalize(targets.float(), dim=1)
    if len(T) == 0:
        return T
    keep: list[int] = []
    for i in range(len(T)):
        if not keep or float((T[keep] @ T[i]).max()) <= dedup_cos:
            keep.append(i)
            if len(keep) >= 4 * cap:
                break
    U = T[keep]
    if len(U) > cap:
        U = U[_fps(U, cap)]
    return U


def calibrate(
    language: Tensor,
    opacity: Tensor,
    targets: Tensor,
    negatives: Tensor,
    vocabulary_embeddings: Tensor,
    vocabulary: list[str] | tuple[str, ...] = NEGATIVE_VOCABULARY,
    *,
    top_k: int = TOP_K,
    held_out: Iterable[str] = (),
) -> NoTargetCalibration:
    """Calibrate the presence threshold of one field level.

    Args:
        language: ``[N, D]`` per-Gaussian language features; opacity: ``[N]``.
        targets: ``[J, D]`` the level's Ins2Lang targets (mask embeddings).
        negatives: ``[K, D]`` canonical negative embeddings.
        vocabulary_embeddings: ``[V, D]`` embeddings of ``vocabulary``.
        held_out: evaluation prompts that must not be calibration words (:func:`check_held_out`).
    """
    check_held_out(held_out, vocabulary)
    valid = opacity > OPACITY_MIN
    U = unique_targets(targets)
    keep, dropped = filter_vocabulary(list(vocabulary), vocabulary_embeddings, U if len(U) else targets)
    pos = top_k_score(raw_relevancy(language, U, negatives), valid, top_k).numpy() if len(U) else np.zeros(0)
    Vk = vocabulary_embeddings[keep]
    neg = top_k_score(raw_relevancy(language, Vk, negatives), valid, top_k).numpy() if len(keep) else np.zeros(0)
    thr, method = choose_threshold(pos, neg)
    floor = float(np.percentile(neg, 95)) if len(neg) else 0.5
    return NoTargetCalibration(
        threshold=thr,
        floor=min(floor, thr),
        positive_scores=pos,
        negative_scores=neg,
        negative_words=[vocabulary[i] for i in keep],
        dropped_words=[vocabulary[i] for i in dropped],
        method=method,
        top_k=top_k,
    )
