"""Query-time 2D prompts, oracle-2D: image prompts lifted into 3D, and the 2D-first branch against the field.

1. Image prompts: a box around every object visible in each held-out view (cos3d query --view V --box ...),
   lifted through that view's blending weights; scored by IoU in the other held-out views (no ground truth
   is read by the query; no 2D segmenter: the box itself is the region).
2. The 2D-first branch (cos3d.query.concept2d) against the field-only answer:

An oracle concept segmenter (the scene's instance maps, standing in for SAM 3) segments each prompt in k
training views; its masks are lifted through the views' blending weights and fused with the field's answer.
Every branch is scored in the held-out views: mIoU and mAcc@0.25 over (present prompt, view) pairs, and the
no-target decision accuracy over present + absent prompts (the tabletop protocol's prompts: names,
held-out paraphrases, plurals, absent things; no parts). The query paths read no ground truth; the oracle
does, which is the point of the protocol: this measures the lifting and fusion, not SAM 3.

3. The branches every surface offers (``cos3d query --branch field|2d|fused``, ``load(...).query(branch=...)``):
   the same engine answers each prompt through ``QueryEngine.query(text, branch=b)`` with the oracle concept
   stand-in as its concept segmenter (labelled "oracle concept stand-in (oracle-2D)"), each branch with its
   own presence decision (fused: :func:`cos3d.query.concept2d.fused_presence`); the same rows on the
   development prompts (cos3d.eval.devprompts: where the presence rule's thresholds are to be chosen).

    python scripts/bench_prompts2d.py --run runs/tabletop [--k 2 4 8] [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import sys
import time


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--run", required=True, help="a trained run folder")
    ap.add_argument("--k", type=int, nargs="+", default=[4], help="training views the oracle segments (several: one row each)")
    ap.add_argument("--json", help="also write the numbers here")
    args = ap.parse_args(argv)

    import cos3d
    from cos3d.eval.tabletop import tabletop_queries
    from cos3d.eval.branches2d import compare_branches
    from cos3d.query.concept2d import BRANCHES
    from cos3d.testing.vision import OracleConceptSegmenter

    ts = cos3d.load(args.run, device="cpu")
    scene, engine = ts.scene, ts.engine
    qs = [q for q in tabletop_queries(scene, parts=False)]
    prompts = [(q.text, list(q.gt_ids)) for q in qs]
    oracle = OracleConceptSegmenter(scene, {t: ids for t, ids in prompts})
    views = [(f.camera, f.load_instance()) for f in scene.split("test")]
    out = {"run": str(args.run), "prompts": len(prompts), "present": sum(bool(i) for _, i in prompts),
           "held_out_views": len(views), "rows": {}}
    print(f"{len(prompts)} prompts ({out['present']} present), {len(views)} held-out views; oracle-2D", file=sys.stderr)
    from cos3d.eval.tabletop import evaluate_image_prompts

    t0 = time.perf_counter()
    ip = evaluate_image_prompts(engine, lookup=False)
    rows = [r for r in ip["prompts"] if r["path"] == "lift"]
    per = [sum(r["ious"].values()) / len(r["ious"]) for r in rows if r["ious"]]
    lift = ip.get("lift", {}) | {"prompts": len(rows), "seconds": round(time.perf_counter() - t0, 1),
                                 "ms_per_prompt": round(sum(r["ms"] for r in rows) / max(1, len(rows)), 1),
                                 "objects_mean_iou_min": round(min(per), 3) if per else None}
    out["lift"] = lift
    print(f"image prompts (lift): {lift}", file=sys.stderr)
    print("| image prompts (box on a held-out view, lifted) | prompts | mIoU | mAcc@0.25 | worst object | ms/prompt |")
    print("|---|---:|---:|---:|---:|---:|")
    print(f"| lift | {lift['prompts']} | {lift.get('mIoU', float('nan')):.3f} | {lift.get('mAcc@0.25', float('nan')):.3f} | "
          f"{lift['objects_mean_iou_min']} | {lift['ms_per_prompt']} |\n")
    lines = ["| k views | branch | mIoU | mAcc@0.25 | no-target acc. | pairs |", "|---:|---|---:|---:|---:|---:|"]
    for k in args.k:
        t0 = time.perf_counter()
        res = compare_branches(engine, oracle, prompts, views, k=k)
        out["rows"][str(k)] = res | {"seconds": round(time.perf_counter() - t0, 1)}
        for b in BRANCHES:
            r = res[b]
            lines.append(f"| {k} | {b} | {r['mIoU']:.3f} | {r['mAcc@0.25']:.3f} | {r['no_target_accuracy']:.3f} | {r['pairs']} |")
    print("\n".join(lines))

    from cos3d.eval.branches2d import compare_query_branches
    from cos3d.eval.devprompts import dev_tabletop_queries

    dev = [(q.text, list(q.gt_ids)) for q in dev_tabletop_queries(scene) if q.kind in ("paraphrase", "absent")]
    engine.concept_segmenter = OracleConceptSegmenter(scene, dict(prompts) | dict(dev))
    lines = ["", "| oracle concept stand-in (oracle-2D): `--branch` | prompts | mIoU | mAcc@0.25 | no-target acc. | pairs |",
             "|---|---|---:|---:|---:|---:|"]
    out["branches"] = {}
    for name, ps in (("evaluation", prompts), ("development", dev)):
        t0 = time.perf_counter()
        res = compare_query_branches(engine, ps, views)
        out["branches"][name] = res | {"seconds": round(time.perf_counter() - t0, 1)}
        for b, r in res.items():
            lines.append(f"| {b} | {name} ({len(ps)}) | {r['mIoU']:.3f} | {r['mAcc@0.25']:.3f} | "
                         f"{r['no_target_accuracy']:.3f} | {r['pairs']} |")
    print("\n".join(lines))
    if args.json:
        with open(args.json, "w") as fh:
            json.dump(out, fh, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
