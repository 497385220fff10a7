#!/usr/bin/env python
"""Presence trade-off curves (issue 13): false-empty rate against no-target accuracy as each presence rule's
parameter varies, on the development prompts (where the parameter is chosen) and on the evaluation prompts
(reported only).

    python scripts/presence_curve.py --runs /work/runs13/run0 /work/runs13/run1 /work/runs13/run2

Only presence decisions are scored (no selection, no IoU): see :mod:`cos3d.eval.presence`. Prints markdown
tables and, last, one JSON line with every curve and the development choice of each rule.
"""

from __future__ import annotations

import argparse
import json
import sys

import numpy as np

VALUES = {
    "relevancy": [round(x, 2) for x in np.arange(-0.30, 0.31, 0.05)],
    "cosine": [round(x, 2) for x in np.arange(-0.20, 0.31, 0.05)],
    "relative": [round(x, 2) for x in np.arange(-0.08, 0.11, 0.02)],
    "inner": [round(x, 1) for x in np.arange(0.0, 1.01, 0.1)],
}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--runs", nargs="+", required=True, help="trained tabletop run folders")
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args(argv)

    import torch

    torch.set_num_threads(args.threads)
    import cos3d
    from cos3d.eval.presence import choose, dev_queries, eval_queries, presence_statistics, sweep
    from cos3d.query import notarget

    rows: dict[str, list[dict]] = {"dev": [], "eval": []}
    for run in args.runs:
        e = cos3d.load(run).engine
        rows["dev"] += presence_statistics(e, dev_queries(e.scene))
        rows["eval"] += presence_statistics(e, eval_queries(e.scene))
    out: dict = {"runs": args.runs, "curves": {}, "chosen_on_dev": {},
                 "shipped": {"rule": notarget.RULE, "param": notarget.RULE_PARAM, "part_rule": notarget.PART_RULE,
                             "part_param": notarget.PART_PARAM}}
    for which in ("dev", "eval"):
        obj = [r for r in rows[which] if r["within"] is None]
        par = [r for r in rows[which] if r["within"] is not None]
        n_p = sum(r["present"] for r in obj)
        print(f"\n**{which}** prompts: {n_p} present / {len(obj) - n_p} absent whole-object rows, "
              f"{sum(r['present'] for r in par)} present / {sum(not r['present'] for r in par)} absent part rows "
              f"({len(args.runs)} runs)\n")
        for rule in ("relevancy", "cosine", "relative", "inner"):
            curve = sweep(par if rule == "inner" else obj, rule, VALUES[rule])
            out["curves"][f"{which}:{rule}"] = curve
            if which == "dev":
                c = choose(curve, parts=rule == "inner")
                out["chosen_on_dev"][rule] = None if c is None else c["value"]
            key = "no_target_parts" if rule == "inner" else "no_target"
            cells = [f"{c['value']:+.2f}: {c['false_empty']:.2f} / {c[key]:.2f}" if c[key] is not None
                     else f"{c['value']:+.2f}: {c['false_empty']:.2f} / –" for c in curve]
            print(f"- {rule} (parameter: false-empty / no-target): " + "; ".join(cells))
    print(json.dumps(out, default=float))
    return 0


if __name__ == "__main__":
    sys.exit(main())
