#!/usr/bin/env python
"""Query-engine benchmark: reference vs fast refinement, and latency vs number of Gaussians.

    python scripts/bench_query.py --run RUN            # an existing run (e.g. cos3d-demo/run)
    python scripts/bench_query.py --workdir DIR        # makes the demo tabletop + run there (resumable)

Part 1, honest timings (every prompt is answered once by the timed engine; nothing is re-run after its
own cache fill): the present tabletop text prompts (names, held-out paraphrases, plurals; not parts)
are split into two disjoint halves A and B. A **fresh** engine answers A (its instance index is built and
its ball cache fills as these prompts run: what a new process pays), then the same, now **warm**, engine
answers B — prompts it has never seen. Each prompt's refinement is timed fast (the engine's) and
reference (the literal loop, once) on the same relevancy; agreement = IoU of the two selections. The same
split is timed end to end (``engine.query``: embed, relevancy, presence, refinement, objects) on a second
fresh engine, with the one-off calibration and index build reported apart.
Part 2: the scene's Gaussians subsampled / duplicated to several N (duplicates get a tiny feature jitter
so they are distinct Gaussians); per N a fresh index, each object-name prompt refined once in turn
(later prompts find the balls earlier ones filled), and the reference loop once.
On a CUDA machine relevancy also runs on the GPU (the refinement loops are CPU code).

The LAST line is one JSON object: fresh and warm reference/fast totals and speed-ups, end-to-end
latencies, agreement_iou (the minimum over prompts), n_gaussians, device, plus per-N rows.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch


def _best(fn, repeats: int):
    best, out = float("inf"), None
    for _ in range(repeats):
        t = time.perf_counter()
        out = fn()
        best = min(best, time.perf_counter() - t)
    return best * 1e3, out


def _iou(a: torch.Tensor, b: torch.Tensor, n: int) -> float:
    ma = torch.zeros(n, dtype=torch.bool)
    mb = torch.zeros(n, dtype=torch.bool)
    ma[a] = True
    mb[b] = True
    u = int((ma | mb).sum())
    return 1.0 if u == 0 else int((ma & mb).sum()) / u


def _run_dir(args) -> Path:
    if args.run is not None:
        return args.run
    from cos3d.apps.demo import DemoConfig, prepare_scene, train_scene

    cfg = DemoConfig(workdir=args.workdir, resume=True, progress=False)
    args.workdir.mkdir(parents=True, exist_ok=True)
    scene = prepare_scene(cfg)
    run, _ = train_scene(cfg, scene)
    return run


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--run", type=Path, default=None, help="a trained run folder")
    ap.add_argument("--workdir", type=Path, default=Path("bench-query"), help="where to make a run when --run is absent")
    ap.add_argument("--repeats", type=int, default=2, help="part 2: best of this many relevancy runs")
    ap.add_argument("--threads", type=int, default=1, help="torch threads (1 is fastest on a small shared CPU)")
    ap.add_argument("--scales", default="0.25,0.5,1,2,4", help="N multipliers for part 2")
    ap.add_argument("--reference-max-n", type=int, default=400_000, help="skip the reference loop above this N")
    args = ap.parse_args(argv)

    import cos3d
    from cos3d.eval.tabletop import tabletop_queries
    from cos3d.query.engine import QueryEngine
    from cos3d.query.refine import InstanceIndex, refine_fast, refine_reference
    from cos3d.query.relevancy import normalize_relevancy, raw_relevancy

    torch.set_num_threads(args.threads)
    run = _run_dir(args)
    import cos3d.pipeline.trained

    ts = cos3d.pipeline.trained.load(run, device="cpu")
    eng = QueryEngine(ts)
    scene = eng.scene
    device = "cpu"
    gpu = torch.cuda.is_available()
    if gpu:
        device = f"cpu + {torch.cuda.get_device_name(0)} (relevancy)"

    # ---- part 1: fresh engine on prompts A, then the warm engine on different prompts B
    qs_all = [q for q in tabletop_queries(scene) if q.present]
    qs = [q for q in qs_all if not q.within]
    halves = {"fresh": qs[0::2], "warm": qs[1::2]}
    n = eng.num_gaussians
    lvl = eng.level
    lv = eng.level_state(lvl)
    t = time.perf_counter()
    eng.index(lvl)
    index_ms = (time.perf_counter() - t) * 1e3
    rows = []
    for phase, group in halves.items():
        for q in group:
            R = eng.relevancy(eng.embed_text([q.text]), lvl)[0]
            r = normalize_relevancy(R)
            t = time.perf_counter()
            fast = eng.refine(r, lvl)
            t_fast = (time.perf_counter() - t) * 1e3
            t = time.perf_counter()
            ref = refine_reference(lv.unit, r, eng.opacity, lv.dbar)
            t_ref = (time.perf_counter() - t) * 1e3
            rows.append(dict(phase=phase, query=q.label, kind=q.kind, seeds=ref.n_seeds, regions=len(ref.regions),
                             selected=int(ref.selected.numel()), reference_ms=t_ref, fast_ms=t_fast,
                             iou=_iou(ref.selected, fast.selected, n)))
    print(f"part 1: {n} Gaussians; {len(halves['fresh'])} prompts on a fresh engine (instance index built in "
          f"{index_ms:.0f} ms, once per level), then {len(halves['warm'])} different prompts on the warm engine")
    print(f"{'phase':6s} {'query':30s} {'seeds':>6s} {'regions':>7s} {'selected':>8s} {'ref ms':>9s} {'fast ms':>8s} {'x':>6s} {'IoU':>6s}")
    for r_ in rows:
        print(f"{r_['phase']:6s} {r_['query'][:30]:30s} {r_['seeds']:6d} {r_['regions']:7d} {r_['selected']:8d} "
              f"{r_['reference_ms']:9.2f} {r_['fast_ms']:8.2f} {r_['reference_ms'] / max(r_['fast_ms'], 1e-9):6.1f} {r_['iou']:6.4f}")
    tot = {ph: (sum(r_["reference_ms"] for r_ in rows if r_["phase"] == ph), sum(r_["fast_ms"] for r_ in rows if r_["phase"] == ph))
           for ph in halves}
    agree = min((r_["iou"] for r_ in rows), default=1.0)
    for ph, (a, b) in tot.items():
        extra = f" (+ {index_ms:.0f} ms index build: {a / max(b + index_ms, 1e-9):.1f}x)" if ph == "fresh" else ""
        print(f"{ph}: reference {a:.1f} ms, fast {b:.1f} ms, speedup {a / max(b, 1e-9):.1f}x{extra}")
    print(f"min IoU fast vs reference: {agree:.4f}")

    # end to end on a second fresh engine: one-offs (calibration, index) apart, then A, then B
    e2 = QueryEngine(ts)
    t = time.perf_counter()
    e2.calibration_for(lvl)
    cal_ms = (time.perf_counter() - t) * 1e3
    t = time.perf_counter()
    e2.index(lvl)
    idx2_ms = (time.perf_counter() - t) * 1e3
    e2e: dict[str, list[float]] = {}
    for phase, group in halves.items():
        for q in group:
            t = time.perf_counter()
            e2.query(q.text)
            e2e.setdefault(phase, []).append((time.perf_counter() - t) * 1e3)
    for ph, v in e2e.items():
        print(f"end to end, {ph} engine: median {np.median(v):.1f} ms, max {max(v):.1f} ms over {len(v)} prompts "
              f"(one-offs before them: calibration {cal_ms:.0f} ms, index {idx2_ms:.0f} ms)")

    # ---- part 2: latency vs N
    lv = eng.level_state(eng.level)
    bg = {i for i, nm in scene.labels.items() if nm and nm[0] in ("floor", "table")}
    texts = [q.text for q in qs if not q.within and q.kind == "name" and not set(q.gt_ids) & bg]
    P = eng.embed_text(texts)
    negs = eng.negatives
    L0 = lv.language.float()
    scales = [float(s) for s in args.scales.split(",") if s.strip()]
    g = torch.Generator().manual_seed(0)
    per_n = []
    print(f"\npart 2: latency vs N ({len(texts)} object-name queries; per query, ms)")
    print(f"{'N':>9s} {'relevancy':>10s} {'rel GPU':>8s} {'fast':>8s} {'reference':>10s} {'x':>6s} {'IoU':>6s}")
    for s in scales:
        m = max(1, int(round(n * s)))
        idx = torch.randperm(n, generator=g)[:m] if m <= n else torch.cat([torch.arange(n), torch.randint(0, n, (m - n,), generator=g)])
        F = lv.unit[idx]
        if m > n:  # distinct duplicates: tiny jitter of the features
            F = torch.nn.functional.normalize(F + 1e-3 * torch.randn(F.shape, generator=g), dim=1)
        L = L0[idx]
        o = eng.opacity[idx]
        t_rel, R = _best(lambda: raw_relevancy(L, P, negs), 2)
        t_gpu = None
        if gpu:
            Lg, Pg, Ng = L.cuda(), P.cuda(), negs.cuda()
            raw_relevancy(Lg, Pg, Ng)
            torch.cuda.synchronize()

            def rel_gpu():
                out = raw_relevancy(Lg, Pg, Ng)
                torch.cuda.synchronize()
                return out

            t_gpu, _ = _best(rel_gpu, 3)
        index = InstanceIndex(F)
        Fn = F.numpy()
        tf = tr = 0.0
        ious = []
        for qi in range(len(texts)):
            r = normalize_relevancy(R[qi])
            a, fa = _best(lambda: refine_fast(F, r, o, lv.dbar, index=index, unit_instance=Fn), 1)
            tf += a
            if m <= args.reference_max_n:
                b, rb = _best(lambda: refine_reference(F, r, o, lv.dbar), 1)
                tr += b
                ious.append(_iou(fa.selected, rb.selected, m))
        k = max(1, len(texts))
        row = dict(n=m, relevancy_ms=t_rel / k, relevancy_gpu_ms=None if t_gpu is None else t_gpu / k,
                   fast_ms=tf / k, reference_ms=tr / k if ious else None, iou=min(ious) if ious else None)
        per_n.append(row)
        print(f"{m:9d} {row['relevancy_ms']:10.2f} {('%.2f' % row['relevancy_gpu_ms']) if t_gpu else '-':>8s} "
              f"{row['fast_ms']:8.2f} {('%.2f' % row['reference_ms']) if ious else '-':>10s} "
              f"{(row['reference_ms'] / max(row['fast_ms'], 1e-9)) if ious else float('nan'):6.1f} "
              f"{('%.4f' % row['iou']) if ious else '-':>6s}")

    out = {
        "fresh_reference_ms": round(tot["fresh"][0], 3),
        "fresh_fast_ms": round(tot["fresh"][1], 3),
        "fresh_speedup": round(tot["fresh"][0] / max(tot["fresh"][1], 1e-9), 2),
        "fresh_speedup_incl_index": round(tot["fresh"][0] / max(tot["fresh"][1] + index_ms, 1e-9), 2),
        "warm_reference_ms": round(tot["warm"][0], 3),
        "warm_fast_ms": round(tot["warm"][1], 3),
        "warm_speedup": round(tot["warm"][0] / max(tot["warm"][1], 1e-9), 2),
        "end_to_end_ms": {ph: {"median": round(float(np.median(v)), 2), "max": round(max(v), 2), "prompts": len(v)}
                          for ph, v in e2e.items()},
        "calibration_ms": round(cal_ms, 1),
        "agreement_iou": round(agree, 6),
        "n_gaussians": n,
        "n_queries": len(rows),
        "device": device,
        "torch_threads": torch.get_num_threads(),
        "index_ms": round(index_ms, 1),
        "per_n": per_n,
        "cos3d": cos3d.__version__,
    }
    sys.stdout.flush()
    print(json.dumps(out))
    return 0


if __name__ == "__main__":
    sys.exit(main())
