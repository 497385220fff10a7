"""No-target detection: a per-scene calibrated presence test (issue 13: on the prompt's cosine with the field).

COS3D's normalised relevancy (min-max, then ``clip(2r − 1, 0, 1)``) always selects something, so an
absent object ("elephant" on a tabletop) would return whatever is least irrelevant. Presence is decided
before that, on a raw statistic of the prompt against the field.

Statistics (:func:`presence_statistics`). For a prompt embedding ``p``, over the Gaussians with opacity > 0.1:
``s(p)`` = the mean of the ``k = 32`` largest raw LERF relevancies ``R``; ``c(p)`` = the same of the cosines
``L·p`` (recovered exactly from ``R``: no second read of the field). A mean of the top 32 rather than the
maximum keeps one odd Gaussian from deciding. The rules (:data:`RULES`, :func:`decide`) read one of them;
the engine's is :data:`RULE` = ``cosine``: the relevancy's canonical-negatives term differs from object to
object whatever the prompt, so on ``s`` a present thing could score below an absent one.

Calibration (per scene and level, computed once by the engine, :func:`calibrate`):

- **Known positives** (:data:`POSITIVES`, issue 26): for ``labels``, whose mask embeddings are text like a
  query, the level's Ins2Lang targets ``c_j`` (the embeddings of masks seen in training, i.e. things that are
  in the scene), de-duplicated (cos > 0.995) and capped at 64 by farthest-point sampling; ``P = {s(c_j)}``
  (and their ``c``). For an embedder whose masks are images (CLIP, SigLIP, the modality-gap stand-in
  ``labels-gap``; :attr:`cos3d.vision.base.Embedder.mask_embeddings_are_text` False) the targets would score
  image-to-image (~0.9) against text queries (~0.3): the positives are instead the vocabulary words that
  resemble the targets best, scored text-to-field like a query; when they do not stand clear of the
  negatives, the threshold is the ``presence_words_quantile`` of the negatives (:func:`words_threshold`).
- **Known negatives**: a shipped vocabulary of common object names (:data:`NEGATIVE_VOCABULARY`, ~190
  words), embedded by the scene's embedder, minus the words too close to any target: cosine > 0.6, or a
  similarity more than 2.5 standard deviations above that target's mean similarity over the vocabulary
  (so a word for something in the scene is not a negative, whatever the embedding space's scale);
  ``Q = {s(n)}`` (and their ``c``).
- **Threshold**: with ``p_lo`` = the 10th percentile of the positives and ``q_hi`` = the 95th percentile of
  the negatives (for ``s`` in logit space), ``τ = q_hi + m (p_lo − q_hi)`` when they are separated (the
  margin ``m`` is :attr:`cos3d.query.settings.QuerySettings.presence_margin`, chosen on the development
  prompts: a paraphrase scores below the exact training embedding, so the best margin sits near the
  negatives), else the split that maximises balanced accuracy on ``P ∪ Q``.

A prompt is answered as **absent** when its statistic is below ``τ``; the answer is then empty and its
``reason`` names the statistic and the threshold. A hierarchical prompt ("head" within "robot") is decided
inside the parent's Gaussians (:data:`PART_RULE` = ``inner``): its top-k cosine there must reach the 0.9
quantile of the kept vocabulary words' top-k cosines there. The calibration (thresholds, score
distributions, counts) is kept on the engine (:attr:`QueryEngine.calibration`) and reported in JSON output.
The rules' parameters (:class:`cos3d.query.settings.QuerySettings`) are chosen on the development prompts
alone (:mod:`cos3d.eval.devprompts`) by ``scripts/tune_dev.py``, which records every candidate's development
score and the choice in ``cos3d/query/tuned.json``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Iterable

import numpy as np
import torch
from torch import Tensor

from cos3d.query.relevancy import raw_relevancy
from cos3d.query.settings import PART_RULES, RULES, QuerySettings

TOP_K = 32
OPACITY_MIN = 0.1
MARGIN = 0.15
PRESENCE_STATE_VERSION = 3
"""Bumped when the saved calibration gains fields (2: the cosine statistics and the kept vocabulary's
embeddings of the presence rules; 3: text-word positives, :data:`POSITIVES`), so that a query state saved
before is rebuilt, not misread."""

POSITIVES: tuple[str, ...] = ("targets", "words")
"""Where :func:`calibrate` takes its known positives from (issue 26):

- ``targets``: the level's Ins2Lang targets themselves (the mask embeddings). Right only when a mask's
  embedding is in the modality of a text query (``labels``: both embed names;
  :attr:`cos3d.vision.base.Embedder.mask_embeddings_are_text`). With CLIP the targets are image embeddings:
  their cosine with the field (~0.8–0.95) is far above any text query's (~0.2–0.35), and a threshold placed
  between them and the (text) negatives would answer every present thing "not here".
- ``words``: text words, scored against the field exactly like a user's query: for each target, the
  calibration vocabulary's word that resembles it best, when it stands out from the vocabulary (its
  similarity more than ``max_z`` standard deviations above the target's mean over the vocabulary: the same
  test that keeps it out of the negatives). The z-score is read per target, so a shared offset and a
  compressed scale between modalities (the modality gap) leave the choice of words unchanged. Used for
  every embedder whose masks are images (CLIP, SigLIP, the modality-gap stand-in ``labels-gap``)."""

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
    """Raise :class:`~cos3d.core.errors.Cos3dError` when an evaluation prompt is a calibration word up to case,
    punctuation, articles, number and word order (:func:`cos3d.core.phrases.normalize`: "Elephants." is
    "elephant"): a no-target accuracy measured on the calibration set would overstate it."""
    from cos3d.core.errors import Cos3dError
    from cos3d.core.phrases import overlapping

    clash = overlapping(prompts, vocabulary)
    if clash:
        shown = ", ".join(f"{p!r}" + (f" (~ {v!r})" if p != v else "") for p, v in clash[:6])
        raise Cos3dError(f"evaluation prompts overlap the no-target calibration vocabulary: {shown}"
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
    positive_cos: np.ndarray = field(repr=False, default_factory=lambda: np.zeros(0))
    """The known positives' top-k mean cosine (the ``cosine`` rule's positives)."""
    negative_cos: np.ndarray = field(repr=False, default_factory=lambda: np.zeros(0))
    """The known negatives' top-k mean cosine (the ``cosine`` rule's negatives)."""
    vocabulary_embeddings: Tensor | None = field(repr=False, default=None)
    """``[V', D]`` the kept vocabulary words' embeddings: the "rest of the world" of the ``relative`` rule."""
    forced: bool = False
    """Every prompt counts as present (evaluation only: the error budget measures the selection alone)."""
    positives_from: str = "targets"
    """Where the known positives came from (:data:`POSITIVES`)."""
    positive_words: list[str] = field(default_factory=list)
    """The text words that were the known positives (``positives_from == "words"``)."""

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
            "positive_cos": torch.from_numpy(np.asarray(self.positive_cos, np.float64)),
            "negative_cos": torch.from_numpy(np.asarray(self.negative_cos, np.float64)),
            "vocabulary_embeddings": (torch.zeros(0) if self.vocabulary_embeddings is None
                                      else self.vocabulary_embeddings.float().cpu()),
            "positives_from": self.positives_from,
            "positive_words": list(self.positive_words),
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
            positive_cos=state["positive_cos"].numpy(),
            negative_cos=state["negative_cos"].numpy(),
            vocabulary_embeddings=state["vocabulary_embeddings"] if state["vocabulary_embeddings"].numel() else None,
            positives_from=str(state.get("positives_from", "targets")),
            positive_words=list(state.get("positive_words", [])),
        )

    def to_dict(self) -> dict:
        return {
            "threshold": float(self.threshold),
            "floor": float(self.floor),
            "statistic": (f"mean of the top {self.top_k} " + ("raw relevancies" if RULE == "relevancy" else "cosines L·p")
                          + f" over Gaussians with opacity > {OPACITY_MIN}; compared with "
                          + ("'threshold'" if RULE == "relevancy" else "the rule's threshold ('cosine_threshold' for cosine)")),
            "rule": f"{RULE} ({RULE_PARAM:g}); parts: {PART_RULE} ({PART_PARAM:g})",
            "cosine_threshold": ((float(words_threshold(self.positive_cos, self.negative_cos, RULE_PARAM, WORDS_QUANTILE,
                                                         logit=False)) if self.positives_from == "words" else
                                  float(_margin_threshold(self.positive_cos, self.negative_cos, RULE_PARAM, logit=False)))
                                 if len(self.negative_cos) and (len(self.positive_cos) or self.positives_from == "words")
                                 else None),
            "method": self.method,
            "positives_from": self.positives_from,
            "positive_words": list(self.positive_words),
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
    return float(1 / (1 + math.exp(-_balanced_cut(lp, ln)))), "balanced"


def _balanced_cut(lp: np.ndarray, ln: np.ndarray) -> float:
    """The cut point (a midpoint between sorted values) maximising balanced accuracy of ``lp >= c`` vs
    ``ln < c``."""
    cuts = np.unique(np.concatenate([lp, ln]))
    mids = np.concatenate([[cuts[0] - 1e-3], (cuts[:-1] + cuts[1:]) / 2, [cuts[-1] + 1e-3]])
    best, best_acc = mids[0], -1.0
    for c in mids:
        acc = 0.5 * ((lp >= c).mean() + (ln < c).mean())
        if acc > best_acc:
            best, best_acc = c, acc
    return float(best)


MAX_Z = 2.5
"""A vocabulary word whose similarity to a target is this many standard deviations above the target's mean
over the vocabulary resembles that target: not a negative; the best such word is a ``words`` positive."""


def _word_z(word_emb: Tensor, targets: Tensor) -> tuple[Tensor, Tensor]:
    """``(S, z)``: ``[V, J]`` similarities of the words to the targets and their per-target z-scores."""
    S = word_emb.float() @ targets.float().T  # [V, J]
    mu = S.mean(0, keepdim=True)
    sd = S.std(0, keepdim=True).clamp_min(1e-6)
    return S, (S - mu) / sd


def positive_words(word_emb: Tensor, targets: Tensor, *, max_z: float = MAX_Z) -> list[int]:
    """Indices of the ``words`` positives (:data:`POSITIVES`): per target, the vocabulary word of the largest
    z-score when it exceeds ``max_z``; each word once, in order of first use."""
    if len(targets) == 0 or len(word_emb) == 0:
        return []
    _, z = _word_z(word_emb, targets)
    best = z.argmax(0)
    out: list[int] = []
    for j, i in enumerate(best.tolist()):
        if float(z[i, j]) > max_z and i not in out:
            out.append(i)
    return out


def filter_vocabulary(
    words: list[str], word_emb: Tensor, targets: Tensor, *, max_cos: float = 0.6, max_z: float = MAX_Z
) -> tuple[list[int], list[int]]:
    """Indices of kept and dropped ``words`` (see the module docstring)."""
    S, z = _word_z(word_emb, targets)
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
    positives: str = "targets",
) -> NoTargetCalibration:
    """Calibrate the presence threshold of one field level.

    Args:
        language: ``[N, D]`` per-Gaussian language features; opacity: ``[N]``.
        targets: ``[J, D]`` the level's Ins2Lang targets (mask embeddings).
        negatives: ``[K, D]`` canonical negative embeddings.
        vocabulary_embeddings: ``[V, D]`` embeddings of ``vocabulary``.
        held_out: evaluation prompts that must not be calibration words (:func:`check_held_out`).
        positives: where the known positives come from (:data:`POSITIVES`): ``targets`` only when the mask
            embeddings are in the query's modality (the engine reads
            :attr:`cos3d.vision.base.Embedder.mask_embeddings_are_text`), else ``words``.
    """
    if positives not in POSITIVES:
        raise ValueError(f"positives must be one of {POSITIVES}, got {positives!r}")
    check_held_out(held_out, vocabulary)
    valid = opacity > OPACITY_MIN
    U = unique_targets(targets)
    keep, dropped = filter_vocabulary(list(vocabulary), vocabulary_embeddings, U if len(U) else targets)
    pos_words: list[int] = []
    if positives == "words":  # text words scored against the field, like a user's query (issue 26)
        pos_words = positive_words(vocabulary_embeddings, U)
        P = vocabulary_embeddings[pos_words].float()
    else:
        P = U
    pos = top_k_score(raw_relevancy(language, P, negatives), valid, top_k).numpy() if len(P) else np.zeros(0)
    Vk = vocabulary_embeddings[keep]
    neg = top_k_score(raw_relevancy(language, Vk, negatives), valid, top_k).numpy() if len(keep) else np.zeros(0)
    thr, method = choose_threshold(pos, neg)
    floor = float(np.percentile(neg, 95)) if len(neg) else 0.5
    pos_cos = top_k_score(_cosines(language, P), valid, top_k).numpy() if len(P) else np.zeros(0)
    neg_cos = top_k_score(_cosines(language, Vk), valid, top_k).numpy() if len(keep) else np.zeros(0)
    return NoTargetCalibration(
        threshold=thr,
        floor=min(floor, thr),
        positive_scores=pos,
        negative_scores=neg,
        negative_words=[vocabulary[i] for i in keep],
        dropped_words=[vocabulary[i] for i in dropped],
        method=method,
        top_k=top_k,
        positive_cos=pos_cos,
        negative_cos=neg_cos,
        vocabulary_embeddings=torch.nn.functional.normalize(Vk.float(), dim=1) if len(keep) else None,
        positives_from=positives,
        positive_words=[vocabulary[i] for i in pos_words],
    )


# ---------------------------------------------------------------------------------------------------
# presence rules (issue 13): which statistic decides, against what

_SHIPPED = QuerySettings.shipped()
RULE = _SHIPPED.presence_rule
"""The shipped object rule (:class:`cos3d.query.settings.QuerySettings`, chosen on the development prompts:
``cos3d/query/tuned.json``); the default of :func:`decide`."""
RULE_PARAM = _SHIPPED.presence_margin
"""Its margin (shipped)."""
PART_RULE = _SHIPPED.part_rule
"""The shipped part rule."""
WORDS_QUANTILE = _SHIPPED.presence_words_quantile
"""The shipped quantile of the ``words`` calibration (:func:`decide`)."""
PART_PARAM = _SHIPPED.part_quantile
"""Its quantile (shipped). By construction it is the share of the vocabulary's unrelated words that a part query
inside the parent answers "not here"."""


INNER_SAMPLE = 8192
"""Inside a parent of more opaque Gaussians than this, the part rule compares the prompt and the vocabulary on
an even sample of this many (the vocabulary's ~170 words × the parent would otherwise dominate a query at 1M)."""


def _cosines(language: Tensor, Q: Tensor) -> Tensor:
    """``[T, N]`` float32 ``Q @ language.T``."""
    from cos3d.query.relevancy import _similarities

    return _similarities(language, Q.float(), native=False)


def _margin_threshold(pos: np.ndarray, neg: np.ndarray, margin: float, *, logit: bool) -> float:
    """``q_hi + margin (p_lo − q_hi)`` (logit space when ``logit``), or the balanced split when the classes
    overlap (:func:`choose_threshold`)."""
    if logit:
        return choose_threshold(pos, neg, margin)[0]
    if len(neg) == 0:
        return 0.0
    if len(pos) == 0:  # no known positive (no vocabulary word resembles the scene): as relevant as an absent name
        return float(np.percentile(neg, 95))
    p_lo, q_hi = float(np.percentile(pos, 10)), float(np.percentile(neg, 95))
    if p_lo > q_hi:
        return q_hi + margin * (p_lo - q_hi)
    return _balanced_cut(np.asarray(pos, np.float64), np.asarray(neg, np.float64))


def presence_statistics(
    cal: NoTargetCalibration, R: Tensor, P: Tensor, valid: Tensor, *, neg_max: Tensor,
    subset: Tensor | None = None, language: Tensor | None = None, temperature: float | None = None,
    cosines: Tensor | None = None, relevancy_score: bool = True,
) -> list[dict]:
    """What every rule of :func:`decide` reads, per prompt.

    Args:
        R: ``[T, N]`` raw relevancy of the prompts ``P [T, D]``; ``neg_max``: ``[N]`` the canonical
            negatives' term it was computed with (the cosines ``L·p`` are recovered from ``R``, exactly:
            no second read of the field).
        valid: bool ``[N]`` (opacity > :data:`OPACITY_MIN`); ``subset``: bool ``[N]`` the parent of a
            hierarchical query (then ``language`` ``[N, D]`` is needed for the vocabulary inside it).
        cosines: ``[T, N]`` the cosines when the caller has them (:func:`raw_relevancy` ``return_cosines``).
        relevancy_score: also the top-k relevancy ``score`` (only the ``relevancy`` rule reads it; None if not).
    """
    from cos3d.query.relevancy import TEMPERATURE

    tau = TEMPERATURE if temperature is None else temperature
    k = cal.top_k
    score = top_k_score(R, valid, k) if relevancy_score else None
    C = cosines if cosines is not None else recover_cosines(R, neg_max, tau)
    cos = top_k_score(C, valid, k)
    V = cal.vocabulary_embeddings
    if V is not None and len(V):
        sim = P.float() @ V.T
        world = sim.amax(1)
        if cal.positives_from == "words" and len(cal.negative_cos) == len(V):
            # masks are images: the prompt-to-word similarity is text-to-text, on another scale than the prompt's
            # text-to-field cosine; compare with the field's cosine of the word the prompt resembles most instead
            world = torch.as_tensor(cal.negative_cos, dtype=torch.float32)[sim.argmax(1)]
    else:
        world = torch.full((len(P),), -1.0)
    inner_score = inner_cos = None
    inner_neg = None
    if subset is not None:
        keep = valid & subset
        ids = torch.nonzero(keep).flatten()
        if len(ids) > INNER_SAMPLE:  # a large parent: the prompt and the vocabulary on the same even sample
            ids = ids[torch.linspace(0, len(ids) - 1, INNER_SAMPLE).round().long()]
            keep = torch.zeros_like(keep)
            keep[ids] = True
        inner_score = top_k_score(R, keep, k) if relevancy_score else None
        inner_cos = top_k_score(C, keep, k)
        if V is not None and len(V) and language is not None:
            inner_neg = np.sort(top_k_score(_cosines(language[ids], V), torch.ones(len(ids), dtype=torch.bool),
                                            k).numpy())
        else:
            inner_neg = np.zeros(0)
    out = []
    for t in range(len(P)):
        out.append({
            "score": None if score is None else float(score[t]), "cos": float(cos[t]), "world": float(world[t]),
            "inner_score": None if inner_score is None else float(inner_score[t]),
            "inner_cos": None if inner_cos is None else float(inner_cos[t]),
            "inner_negative_cos": inner_neg, "cal": cal,
        })
    return out


def recover_cosines(R: Tensor, neg_max: Tensor, temperature: float | None = None) -> Tensor:
    """The cosines ``L·p`` behind a raw relevancy ``R`` (any shape ``[..., N]``) and its negatives' term
    ``neg_max [N]``: ``neg_max + logit(R) / τ``, exact up to float32 rounding (1e-5 here)."""
    from cos3d.query.relevancy import TEMPERATURE

    tau = TEMPERATURE if temperature is None else temperature
    return neg_max.to(R.device) + torch.logit(R.float().clamp(1e-7, 1 - 1e-7)) / tau


def words_threshold(pos: np.ndarray, neg: np.ndarray, margin: float, quantile: float, *, logit: bool) -> float:
    """The threshold of a ``words`` calibration (:data:`POSITIVES`): the margin rule of :func:`_margin_threshold`
    when the positive words stand clear of the negatives (``p_lo > q_hi``), else the ``quantile`` of the
    negatives' scores: "more like something in the scene than that share of unrelated words" — the part rule's
    test (``inner``), on the whole scene. Both sides are text scored against the field."""
    if len(neg) == 0:
        return 0.5 if logit else 0.0
    q = min(max(float(quantile), 0.0), 1.0)
    if len(pos):
        p_lo, q_hi = float(np.percentile(pos, 10)), float(np.percentile(neg, 95))
        if (float(np.percentile(_logit(pos), 10)) > float(np.percentile(_logit(neg), 95))) if logit else p_lo > q_hi:
            return _margin_threshold(pos, neg, margin, logit=logit)
    return float(np.quantile(np.asarray(neg, np.float64), q))


def decide(stats: dict, rule: str | None = None, param: float | None = None, *, part_rule: str | None = None,
           part_param: float | None = None, words_quantile: float | None = None) -> tuple[bool, float, float, str]:
    """``(present, statistic, threshold, what)`` of one prompt's :func:`presence_statistics` under a rule
    (:data:`RULES`, :data:`PART_RULES`; defaults :data:`RULE` / :data:`RULE_PARAM`, :data:`PART_RULE` /
    :data:`PART_PARAM`). ``what`` says, in words, the test that failed (or passed). A calibration on text words
    (``positives_from == "words"``: masks are images) places the object threshold by :func:`words_threshold`
    with ``words_quantile`` (default :data:`WORDS_QUANTILE`)."""
    rule = RULE if rule is None else rule
    param = (RULE_PARAM if rule == RULE else _DEFAULT_PARAM[rule]) if param is None else float(param)
    part_rule = PART_RULE if part_rule is None else part_rule
    part_param = PART_PARAM if part_param is None else float(part_param)
    wq = WORDS_QUANTILE if words_quantile is None else float(words_quantile)
    words = getattr(stats.get("cal"), "positives_from", "targets") == "words"
    if rule not in RULES or part_rule not in PART_RULES:
        raise ValueError(f"unknown presence rule {rule!r}/{part_rule!r}; rules: {RULES}, part rules: {PART_RULES}")
    cal: NoTargetCalibration = stats["cal"]
    hier = stats["inner_cos"] is not None
    if cal.forced:
        return True, stats["cos"], -1.0, "presence forced (evaluation)"
    if hier and part_rule == "inner":
        neg = stats["inner_negative_cos"]
        thr = float(np.quantile(neg, min(max(part_param, 0.0), 1.0))) if len(neg) else -1.0
        v = stats["inner_cos"]
        return (v >= thr, v, thr, f"cosine inside the parent {v:.3f} vs {thr:.3f}, the {part_param:.0%} quantile of "
                f"unrelated words there")
    key = (rule, param, wq if words else None)
    thr_cache = cal.__dict__.setdefault("_thresholds", {})
    if rule == "relevancy":
        if stats["score"] is None:
            raise ValueError("the relevancy rule needs presence_statistics(..., relevancy_score=True)")
        if key not in thr_cache:
            t = (words_threshold(cal.positive_scores, cal.negative_scores, param, wq, logit=True) if words
                 else _margin_threshold(cal.positive_scores, cal.negative_scores, param, logit=True))
            thr_cache[key] = (t, min(cal.floor, t))
        thr, floor = thr_cache[key]
        v, inner = stats["score"], stats["inner_score"]
        name = "relevancy score"
    elif rule == "cosine":
        if key not in thr_cache:
            t = (words_threshold(cal.positive_cos, cal.negative_cos, param, wq, logit=False) if words
                 else _margin_threshold(cal.positive_cos, cal.negative_cos, param, logit=False))
            q95 = float(np.percentile(cal.negative_cos, 95)) if len(cal.negative_cos) else t
            thr_cache[key] = (t, min(q95, t))
        thr, floor = thr_cache[key]
        v, inner = stats["cos"], stats["inner_cos"]
        name = "cosine score"
    else:
        thr = floor = param
        v = stats["cos"] - stats["world"]
        inner = None if stats["inner_cos"] is None else stats["inner_cos"] - stats["world"]
        name = f"cosine {stats['cos']:.3f} minus the best unrelated word's {stats['world']:.3f} ="
    if v < thr:
        return False, v, thr, f"nothing in the scene matches ({name} {v:.3f} < threshold {thr:.3f})"
    if hier and inner is not None and inner < floor:
        return False, inner, floor, f"nothing inside the parent matches ({name} there {inner:.3f} < {floor:.3f})"
    return True, v, thr, f"{name} {v:.3f} >= threshold {thr:.3f}"


_DEFAULT_PARAM = {"relevancy": MARGIN, "cosine": MARGIN, "relative": 0.0}
