"""Choose every tunable query setting on the development prompts alone, and record why (issue 23).

For each trained run (tabletop scenes: ``cos3d prepare tabletop`` + ``cos3d train --config fast``), the
development prompts (:func:`cos3d.eval.devprompts.dev_tabletop_queries`: phrasings, part phrasings and absent
things written for tuning, disjoint from every evaluation prompt) are scored with the tabletop protocol's
occlusion masks on the held-out views. The **development score** of a setting is the mean over runs of

    0.5 × mIoU over the present prompts' (view, prompt) pairs (a present prompt answered empty scores 0)
  + 0.5 × the share of absent prompts (things and parts) answered empty,

so a setting gains by finding present things and by saying "not here" for absent ones, with equal weight.
The tunables are chosen one after another in the order of :data:`TUNABLES` (each with the earlier choices
fixed); a tie keeps the candidate listed first (the value shipped before). The evaluation prompts are never
read. ``--write`` records every candidate's score and the choices in ``cos3d/query/tuned.json``, the file the
engine's shipped settings come from (:class:`cos3d.query.settings.QuerySettings`).

    .venv/bin/python scripts/tune_dev.py --runs RUN0 RUN1 RUN2 --write cos3d/query/tuned.json

Prints a table per tunable and, last, one line of JSON.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import sys
import time
from dataclasses import replace
from pathlib import Path

TUNABLES: tuple[tuple[str, tuple], ...] = (
    ("presence_margin", (0.15, 0.0, 0.05, 0.1, 0.2, 0.3)),
    ("presence_top_k", (32, 8, 16, 64)),
    ("part_quantile", (0.9, 0.7, 0.8, 0.95)),
    ("select_objects_on", ("relevancy", "cosine")),
    ("select_parts_on", ("cosine", "relevancy")),
    ("weaker_on", ("cosine", "relevancy", "off")),
    ("weaker_logit", (0.75, 0.5, 1.0, 1.5)),
    ("presence_words_quantile", (0.95, 0.8, 0.85, 0.9, 0.975, 0.99, 1.0)),
    ("attach_thin_parts", (False, True)),
)
"""Each tunable of :class:`cos3d.query.settings.QuerySettings` with its candidates (the value shipped before
this script first ran is listed first: it wins ties). ``presence_words_quantile`` is read only when the masks
are images (:data:`cos3d.query.notarget.POSITIVES`): it is chosen with ``--only presence_words_quantile`` on runs
trained with the modality-gap stand-in (``--embedder labels-gap``), the others on ``labels`` runs."""

FIXED = {
    "presence_rule": "cosine: the statistic chosen on the development curve of issue 13 (docs/benchmarks.md)",
    "part_rule": "inner: the scene-wide part rule answers every part phrasing 'not here' (issue 13)",
    "refinement": "COS3D's: candidates r > 0.5 and opacity > 0.1, thresholds 1 − {0.4, 0.3, 0.2, 0.1} d̄",
}
"""Settings that are not tuned here, and why."""


def dev_score(report) -> dict:
    """The development score of one run's report (module docstring), with its parts."""
    present = [q for q in report.per_query if q.query.present]
    absent = [q for q in report.per_query if not q.query.present]
    pairs = [v for q in present for v in q.ious.values()]
    miou = sum(pairs) / len(pairs) if pairs else 0.0
    absent_ok = sum(q.no_target for q in absent) / len(absent) if absent else 1.0
    false_empty = sum(q.no_target for q in present) / len(present) if present else 0.0
    return {"score": 0.5 * miou + 0.5 * absent_ok, "mIoU": miou, "absent_empty": absent_ok,
            "false_empty": false_empty, "pairs": len(pairs), "present": len(present), "absent": len(absent)}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--runs", type=Path, nargs="+", required=True, help="trained tabletop runs")
    ap.add_argument("--write", type=Path, default=None, help="write the record here (cos3d/query/tuned.json)")
    ap.add_argument("--threads", type=int, default=int(os.environ.get("COS3D_THREADS", "1")))
    ap.add_argument("--only", nargs="+", default=None, metavar="NAME",
                    help="tune only these tunables (the others stay as shipped); --write then updates their "
                         "entries of the existing record and keeps the rest")
    args = ap.parse_args()
    names = [n for n, _ in TUNABLES]
    if args.only and set(args.only) - set(names):
        ap.error(f"unknown tunable(s) {sorted(set(args.only) - set(names))}; tunables: {names}")

    import torch

    import cos3d
    from cos3d.eval.devprompts import dev_tabletop_queries
    from cos3d.eval.tabletop import evaluate
    from cos3d.query.settings import QuerySettings

    torch.set_num_threads(max(1, args.threads))
    t0 = time.perf_counter()
    runs = []
    for r in args.runs:
        ts = cos3d.load(r)
        eng = ts.engine
        runs.append((r, eng, dev_tabletop_queries(eng.scene)))
    settings = QuerySettings.shipped()
    start = settings
    record: dict = {}
    for name, candidates in TUNABLES:
        if args.only and name not in args.only:
            continue
        rows = []
        for value in candidates:
            s = replace(settings, **{name: value})
            per_run = []
            for r, eng, qs in runs:
                eng.settings = s  # a new top-k re-calibrates on the next query
                per_run.append(dev_score(evaluate(eng, qs)))
            mean = {k: sum(p[k] for p in per_run) / len(per_run) for k in ("score", "mIoU", "absent_empty", "false_empty")}
            rows.append({"value": value, **{k: round(v, 4) for k, v in mean.items()},
                         "per_run": [round(p["score"], 4) for p in per_run]})
            print(f"  {name} = {value!r}: dev score {mean['score']:.4f} (mIoU {mean['mIoU']:.3f}, absent empty "
                  f"{mean['absent_empty']:.3f}, false-empty {mean['false_empty']:.3f})", flush=True)
        best = max(rows, key=lambda row: (round(row["score"], 4), -rows.index(row)))
        settings = replace(settings, **{name: best["value"]})
        record[name] = {"choice": best["value"], "score": best["score"], "before": getattr(start, name),
                        "changed": best["value"] != getattr(start, name), "candidates": rows}
        print(f"| {name} | " + " | ".join(f"{row['value']!r}: {row['score']:.4f}" for row in rows)
              + f" | **{best['value']!r}** |", flush=True)
    out = {
        "what": "the query engine's tunable settings, each chosen on the development prompts alone "
                "(cos3d.eval.devprompts; never an evaluation prompt) by scripts/tune_dev.py",
        "score": "mean over runs of 0.5 x dev mIoU (occlusion masks, held-out views, empty = 0) "
                 "+ 0.5 x share of dev absent prompts answered empty; oracle-2D (dataset masks + labels embedder)",
        "order": "one pass in the order below, each with the earlier choices fixed; ties keep the first candidate",
        "runs": [str(r) for r, _, _ in runs],
        "command": "python scripts/tune_dev.py --runs " + " ".join(str(r) for r, _, _ in runs)
                   + (" --only " + " ".join(args.only) if args.only else "")
                   + (f" --write {args.write}" if args.write else ""),
        "date": datetime.date.today().isoformat(),
        "machine": f"{os.cpu_count()}-core {platform.machine()}, torch {torch.__version__}, {args.threads} thread(s)",
        "seconds": round(time.perf_counter() - t0, 1),
        "tunables": record,
        "fixed": FIXED,
    }
    if args.write and args.only:  # update these entries of the existing record, keep the rest
        from cos3d.query.settings import read_record

        old = read_record(args.write)
        seconds = out["seconds"]
        for name, entry in record.items():
            prev = old.get("tunables", {}).get(name)
            if prev is not None:  # "before" stays the value shipped before this tunable was first chosen
                entry["before"] = prev.get("before", entry["before"])
                entry["changed"] = entry["choice"] != entry["before"]
            entry["runs"], entry["command"], entry["date"] = out["runs"], out["command"], out["date"]
            entry["seconds"] = seconds
        out = {**old, "tunables": {**old.get("tunables", {}), **record}, "seconds": old.get("seconds", seconds)}
        out["last_only"] = {"tunables": list(record), "seconds": seconds}
    if args.write:
        from cos3d.core.atomic import write_json

        write_json(args.write, out)
        print(f"wrote {args.write}")
    print(json.dumps({"choices": {k: v["choice"] for k, v in record.items()},
                      "scores": {k: v["score"] for k, v in record.items()},
                      "changed": [k for k, v in record.items() if v["changed"]],
                      "seconds": round(time.perf_counter() - t0, 1)}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
