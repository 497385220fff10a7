"""The ablation of the tabletop protocol (README "What is measured", issue 11): what each part of the system buys.

Query-time branches on one trained run (same fields, same calibrated presence test, so the no-target
decisions differ only where a branch selects nothing):

- ``instance``: **instance field only** (an OpenGaussian-like codebook): each Gaussian belongs to its
  nearest training-mask anchor in instance space; the prompt's LERF relevancy is computed on the anchors'
  mask embeddings, min-max normalised over anchors as COS3D normalises over Gaussians
  (``clip(2r − 1, 0, 1)``), and the Gaussians of every anchor with r > 0.5 (opacity > 0.1) are selected.
  No per-Gaussian language field is read;
- ``language``: **language field only** (LERF/LangSplat-like): the Gaussians with normalised relevancy
  r > 0.5 and opacity > 0.1; no instance field;
- ``collaborative_raw``: COS3D's collaborative query: the adaptive Lang2Ins refinement of the language
  relevancy in instance space, its union of regions as the answer, **without** cos3d's post-filters;
- ``collaborative``: the engine's default: the same plus the post-filters (the selection split into
  objects by instance features and space, fragments dropped, objects much less relevant than the best
  dropped: ``split_objects`` and ``_filter_weaker``).

Training-time variants (stage 0 shared: each imports the run's ``gaussians.ply`` and retrains stages 1–2
into ``RUN/ablation/<variant>/``, reused when finished): ``balance0`` (stage-1 pixel weights n^-0, COS3D's
plain mean, vs cos3d's default 0.5), ``mlp`` (the MLP Ins2Lang mapping vs kernel regression),
``perturb<s>`` (dataset masks with SAM-like errors of strength s: erode/dilate/split/merge/drop).
"""

from __future__ import annotations

import copy
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Sequence

import torch

from cos3d.eval.tabletop import Answer, AnswerFn, EvalQuery, engine_answer

if TYPE_CHECKING:  # pragma: no cover
    from torch import Tensor

    from cos3d.query.engine import QueryEngine
    from cos3d.pipeline.trained import TrainedScene

BRANCHES = ("instance", "language", "collaborative_raw", "collaborative")
COS3D_LERF_ABLATION = {"instance": 44.07, "language": 48.99, "collaborative": 50.76}
"""COS3D's own three-branch ablation, mIoU on LERF-OVS (its paper)."""


def _empty() -> "Tensor":
    return torch.zeros(0, dtype=torch.long)


class BranchAnswers:
    """Answer functions of :data:`BRANCHES` on one trained run (module docstring)."""

    def __init__(self, ts: "TrainedScene") -> None:
        self.ts = ts
        self.engine: QueryEngine = ts.engine
        self._anchor_of: dict[str, Tensor] = {}

    # ---------------------------------------------------------------- shared steps
    def _presence(self, p: "Tensor", lvl: str, subset: "Tensor | None") -> tuple[bool, "Tensor"]:
        """(present?, raw relevancy [N]) by the engine's calibrated test."""
        from cos3d.query.notarget import OPACITY_MIN, decide, presence_statistics
        from cos3d.query.relevancy import negative_max, raw_relevancy

        e = self.engine
        lang = self.ts.fields[lvl].language.detach().cpu().float()
        neg_max = negative_max(lang, e.negatives)
        R = raw_relevancy(lang, p[None], e.negatives, neg_max=neg_max)
        cal = e.calibration_for(lvl)
        valid = e.opacity > OPACITY_MIN
        st = presence_statistics(cal, R, p[None], valid, neg_max=neg_max, subset=subset, language=lang,
                                 relevancy_score=e.settings.presence_rule == "relevancy")[0]
        s = e.settings
        return decide(st, s.presence_rule, s.presence_margin, part_rule=s.part_rule, part_param=s.part_quantile,
                      words_quantile=s.presence_words_quantile)[0], R[0]

    def _subset(self, branch: str, q: EvalQuery) -> "Tensor | None | bool":
        """The parent selection of a part query (bool [N]); False when the parent is absent; None: no parent."""
        if q.within is None:
            return None
        parent = self.answer(branch, EvalQuery(q.within, "name", [1]))
        if parent.no_target or not parent.selected.numel():
            return False
        m = torch.zeros(self.engine.num_gaussians, dtype=torch.bool)
        m[parent.selected] = True
        return m

    def nearest_anchor(self, lvl: str) -> "Tensor":
        """Nearest training anchor of each Gaussian (instance space) ``[N]``."""
        if lvl not in self._anchor_of:
            f = self.ts.fields[lvl]
            U = torch.nn.functional.normalize(f.instance.detach().cpu().float(), dim=1)
            A = torch.nn.functional.normalize(f.anchors.detach().cpu().float(), dim=1)
            out = torch.empty(U.shape[0], dtype=torch.long)
            for s in range(0, U.shape[0], 65536):
                out[s:s + 65536] = (U[s:s + 65536] @ A.T).argmax(1)
            self._anchor_of[lvl] = out
        return self._anchor_of[lvl]

    # ---------------------------------------------------------------- branches
    def answer(self, branch: str, q: EvalQuery) -> Answer:
        if branch == "collaborative":
            return engine_answer(self.engine, q)
        from cos3d.query.notarget import OPACITY_MIN
        from cos3d.query.relevancy import normalize_relevancy, raw_relevancy

        e = self.engine
        subset = self._subset(branch, q)
        if subset is False:
            return Answer(_empty(), True)
        lvl = e.part_level if q.within is not None else e.level
        p = e.embed_text([q.text])[0]
        present, R = self._presence(p, lvl, subset)
        if not present:
            return Answer(_empty(), True)
        valid = e.opacity > OPACITY_MIN
        if subset is not None:
            valid = valid & subset
        # a part query normalises what the engine's does (QuerySettings.select_parts_on), so that the branches
        # differ only in how they select
        on_cos = subset is not None and e.settings.select_parts_on == "cosine"
        if on_cos:
            R = self.ts.fields[lvl].language.detach().cpu().float() @ p.float()
        if branch == "language":
            sel = torch.nonzero((normalize_relevancy(R, subset) > 0.5) & valid).flatten()
        elif branch == "collaborative_raw":
            ref = e.refine(normalize_relevancy(R, subset), lvl, subset=subset)
            sel = ref.selected
        elif branch == "instance":
            f = self.ts.fields[lvl]
            T = f.targets.detach().cpu().float()
            Ra = T @ p.float() if on_cos else raw_relevancy(T, p[None], e.negatives)[0]  # [J]
            ra = normalize_relevancy(Ra)
            chosen = ra > 0.5
            sel = torch.nonzero(chosen[self.nearest_anchor(lvl)] & valid).flatten()
        else:
            raise ValueError(f"unknown branch {branch!r}; choose from {BRANCHES}")
        sel = torch.sort(sel.long()).values
        return Answer(sel, not sel.numel(), 1 if sel.numel() else 0)

    def fn(self, branch: str) -> AnswerFn:
        if branch not in BRANCHES:
            raise ValueError(f"unknown branch {branch!r}; choose from {BRANCHES}")
        return lambda engine, q: self.answer(branch, q)


# -------------------------------------------------------------------- training variants
def variant_configs(run: Path, *, perturbs: Sequence[float] = (), mlp: bool = True, balance0: bool = True
                    ) -> dict[str, Any]:
    """``{variant name: TrainConfig}`` of the training variants (module docstring)."""
    from cos3d.pipeline.run_folder import RunFolder

    folder = RunFolder(Path(run))
    rec = folder.finished_record()
    base = rec.train_config()
    base = replace(base, gaussians=folder.ply, resume=False, restart=True, progress=False)
    out: dict[str, Any] = {}

    def make(name: str, edit: Callable[[Any], None]) -> None:
        cfg = copy.deepcopy(base)
        cfg.out = Path(run) / "ablation" / name
        edit(cfg)
        out[name] = cfg

    if balance0:
        make("balance0", lambda c: setattr(c, "instance", replace(c.instance, balance=0.0)))
    if mlp:
        make("mlp", lambda c: setattr(c, "ins2lang", replace(c.ins2lang, method="mlp")))
    for s in perturbs:
        make(f"perturb{s:g}", lambda c, s=s: setattr(c, "models", replace(c.models, perturb=float(s))))
    return out


def train_variant(cfg: Any, log: Callable[[str], None] = print) -> Path:
    """Train one variant (reused when its folder already holds a finished run); returns its folder."""
    import time

    import cos3d
    from cos3d.core.errors import Cos3dError
    from cos3d.pipeline.runner import train

    try:
        cos3d.load(cfg.out)
        log(f"ablation: reusing {cfg.out}")
        return Path(cfg.out)
    except Cos3dError:
        pass
    if (Path(cfg.out) / "run.json").is_file():  # an interrupted variant: keep its finished stages
        cfg = replace(cfg, resume=True, restart=False)
    t = time.perf_counter()
    train(cfg)
    log(f"ablation: trained {cfg.out} in {time.perf_counter() - t:.1f} s")
    return Path(cfg.out)
