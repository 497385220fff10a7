#!/usr/bin/env python
"""How well can *any* presence threshold do on a run? Separability of the presence statistic on the
**development prompts** (issue 26, item 2: why the modality-gap stand-in's false-empty rate stays far above
the ``labels`` one).

    python scripts/presence_separability.py --runs R1_LABELS R1_GAP R2_LABELS R2_GAP

For each run, on the development prompts' whole-object rows (:func:`cos3d.eval.presence.dev_queries`; the
evaluation prompts are never read):

- ``AUC``: the chance that a present prompt's statistic (the shipped rule's: the top-k mean cosine with the
  field) exceeds an absent prompt's. A threshold rule can do no better than this ordering allows;
- ``accept@R``: the largest share of present prompts a threshold accepts while rejecting at least a share ``R``
  of the absent ones (0.95 / 0.90 / 0.80), chosen **in hindsight** on these rows: an upper bound for every
  calibration of this statistic, not a setting;
- ``shipped``: what the shipped calibration does (share of present prompts accepted, of absent ones rejected);
- ``forced mIoU``: development mIoU of the present prompts with presence forced to "present" (selection only:
  what the field gives once presence is out of the way).

Prints a markdown table and, last, one JSON line.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

import numpy as np

REJECT = (0.95, 0.90, 0.80)


def auc(pos: np.ndarray, neg: np.ndarray) -> float:
    """Probability that a random ``pos`` exceeds a random ``neg`` (ties count half)."""
    if len(pos) == 0 or len(neg) == 0:
        return float("nan")
    d = pos[:, None] - neg[None, :]
    return float(((d > 0) + 0.5 * (d == 0)).mean())


def accept_at(pos: np.ndarray, neg: np.ndarray, reject: float) -> float:
    """The largest share of ``pos`` at or above a threshold that keeps at least ``reject`` of ``neg`` below it."""
    if len(pos) == 0:
        return float("nan")
    best = 0.0
    for t in np.unique(np.concatenate([pos, neg, [np.inf]])):
        if (neg < t).mean() >= reject:
            best = max(best, float((pos >= t).mean()))
    return best


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--runs", nargs="+", type=Path, required=True, help="trained tabletop run folders")
    ap.add_argument("--threads", type=int, default=int(os.environ.get("COS3D_THREADS", "1")))
    args = ap.parse_args(argv)

    import torch

    torch.set_num_threads(args.threads)
    import cos3d
    from cos3d.eval.budget import presence_forced
    from cos3d.eval.devprompts import dev_tabletop_queries
    from cos3d.eval.presence import dev_queries, presence_statistics
    from cos3d.eval.tabletop import evaluate
    from cos3d.query.notarget import decide

    rows = []
    for run in args.runs:
        ts = cos3d.load(run)
        eng = ts.engine
        qs = [q for q in dev_queries(eng.scene) if q.within is None]
        stats = presence_statistics(eng, qs)
        present = np.array([q.present for q in qs])
        v = np.array([s["cos"] for s in stats], np.float64)
        shipped = np.array([decide(s)[0] for s in stats])
        with presence_forced(eng):
            rep = evaluate(eng, [q for q in dev_tabletop_queries(eng.scene) if q.present and not q.is_part])
        pairs = [x for q in rep.per_query for x in q.ious.values()]
        rows.append({
            "run": str(run), "embedder": eng.embedder.name, "present": int(present.sum()),
            "absent": int((~present).sum()), "auc": auc(v[present], v[~present]),
            **{f"accept@{r:.2f}": accept_at(v[present], v[~present], r) for r in REJECT},
            "shipped_accept": float(shipped[present].mean()), "shipped_reject": float((~shipped[~present]).mean()),
            "forced_mIoU": float(np.mean(pairs)) if pairs else float("nan"),
        })
        print(f"{run}: done", file=sys.stderr, flush=True)

    cols = ["embedder", "present", "absent", "auc", *[f"accept@{r:.2f}" for r in REJECT], "shipped_accept",
            "shipped_reject", "forced_mIoU"]
    print("| run | " + " | ".join(cols) + " |")
    print("|---" * (len(cols) + 1) + "|")
    for r in rows:
        print(f"| {Path(r['run']).name} | " + " | ".join(f"{r[c]:.3f}" if isinstance(r[c], float) else str(r[c])
                                                     for c in cols) + " |")
    print(json.dumps({"what": "presence separability on development prompts (hindsight bounds)", "rows": rows}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
