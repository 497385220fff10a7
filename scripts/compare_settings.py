"""What the development tuning changed in the evaluation's numbers (issue 23: "say what changed").

Scores the tabletop protocol's evaluation prompts on each run twice: with the settings shipped before
``scripts/tune_dev.py`` chose them (each tunable's ``before`` in ``cos3d/query/tuned.json``) and with the
shipped ones. Run after the choice was made and recorded; nothing here feeds back into a setting.

    .venv/bin/python scripts/compare_settings.py --runs RUN0 RUN1 RUN2

Prints a table and, last, one line of JSON.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from dataclasses import replace
from pathlib import Path


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--runs", type=Path, nargs="+", required=True)
    ap.add_argument("--threads", type=int, default=int(os.environ.get("COS3D_THREADS", "1")))
    args = ap.parse_args()

    import torch

    import cos3d
    from cos3d.eval.tabletop import evaluate, tabletop_queries
    from cos3d.query.settings import QuerySettings, read_record

    torch.set_num_threads(max(1, args.threads))
    shipped = QuerySettings.shipped()
    before = replace(shipped, **{k: v["before"] for k, v in read_record()["tunables"].items()})
    out: dict = {"before": before.to_dict(), "shipped": shipped.to_dict(), "runs": {}}
    print("| run | settings | held-out mIoU | held-out mAcc@0.25 | false-empty | no-target | near-training mIoU |")
    print("|---|---|---:|---:|---:|---:|---:|")
    for run in args.runs:
        eng = cos3d.load(run).engine
        qs = tabletop_queries(eng.scene)
        rows = {}
        for name, s in (("before", before), ("shipped", shipped)):
            eng.settings = s
            rep = evaluate(eng, qs)
            p = rep.presence
            rows[name] = {"held_out_mIoU": rep.held_out["mIoU"], "held_out_mAcc@0.25": rep.held_out["mAcc@0.25"],
                          "false_empty": p["false_empty_rate"], "no_target": 1 - p["false_present_rate"],
                          "near_mIoU": rep.near.get("mIoU")}
            r = rows[name]
            print(f"| {run} | {name} | {r['held_out_mIoU']:.3f} | {r['held_out_mAcc@0.25']:.3f} | {r['false_empty']:.3f} | "
                  f"{r['no_target']:.3f} | {r['near_mIoU']:.3f} |", flush=True)
        out["runs"][str(run)] = rows
    print(json.dumps(out))
    return 0


if __name__ == "__main__":
    sys.exit(main())
