#!/usr/bin/env python3
"""How cos3d scales: queries as Gaussians grow (25k → 250k → 1M), and training as views and
resolution grow. Prints tables; the last line is one JSON object.

Queries run on a synthetic field with the real engine and the real offline text encoder (``labels``,
all-MiniLM-L6-v2): K objects, each a Gaussian blob in space with its own instance feature and its
name's embedding as language feature (plus noise). Per N it measures, in one process:

- ``first_s``: a fresh engine's first text query (it builds the refinement index and the no-target
  calibration), ``state_first_s``: the same with the state a run folder saves (``query_state.pt``);
- ``warm_ms``: the median of distinct prompts on the warm engine (never the same prompt twice);
- the ball search at the heart of refinement (``cos > t`` around 256 seeds), our spherical k-means
  index side by side with faiss-cpu's exact inner-product range search (IndexFlatIP), on the same
  seeds, with both answers checked equal.

Training (``--train``): generated tabletops of growing views × resolution trained with ``--fast`` in a
subprocess each, reporting per-stage time and peak RSS from run.json.

    python scripts/bench_scale.py --sizes 25000,250000,1000000 --threads 1
    python scripts/bench_scale.py --sizes 25000 --train 24x160,96x320 --threads 1
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

NAMES = ["red coffee mug", "soda can", "yellow rubber duck", "cereal box", "frying pan", "lemon", "ketchup bottle",
         "milk carton", "soccer ball", "wooden tray", "bread loaf", "blue bowl"]
PROMPTS = ["mug", "a can of soda", "duck toy", "box of cereal", "pan", "citrus fruit", "elephant", "bicycle"]


def rss_gib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20


def synthetic_engine(n: int, embedder, seed: int = 0):
    """A QueryEngine over ``n`` synthetic Gaussians in len(NAMES) objects (plus background)."""
    from cos3d.gaussians import Gaussians
    from cos3d.query.engine import QueryEngine, QueryInputs
    from cos3d.scene import Camera, Frame, Scene
    from cos3d.trained import LevelField

    g = torch.Generator().manual_seed(seed)
    k = len(NAMES)
    obj = torch.randint(0, k + 1, (n,), generator=g)  # k = background
    centres = torch.rand(k + 1, 3, generator=g) * 2 - 1
    means = centres[obj] + 0.05 * torch.randn(n, 3, generator=g)
    inst_c = torch.nn.functional.normalize(torch.randn(k + 1, 16, generator=g), dim=1)
    inst = torch.nn.functional.normalize(inst_c[obj] + 0.08 * torch.randn(n, 16, generator=g), dim=1)
    names = torch.as_tensor(embedder.embed_text(NAMES + ["table"])).float()
    lang = torch.nn.functional.normalize(names[obj] + 0.02 * torch.randn(n, names.shape[1], generator=g), dim=1)
    gs = Gaussians(
        means=means,
        quats=torch.tensor([1.0, 0, 0, 0]).repeat(n, 1),
        log_scales=torch.full((n, 3), -4.0),
        opacity_logits=torch.full((n,), 3.0),
        sh=torch.zeros(n, 1, 3),
    )
    field = LevelField(instance=inst, language=lang.half(), anchors=inst_c, targets=names, dbar=0.05)
    cam = Camera(K=np.array([[100.0, 0, 79.5], [0, 100.0, 59.5], [0, 0, 1]]), c2w=np.eye(4), width=160, height=120)
    scene = Scene(root=Path("."), frames=[Frame(name="0", camera=cam, image_path=Path("none.png"))])
    return QueryEngine(QueryInputs(scene=scene, gaussians=gs, fields={"l": field}, embedder=embedder))


def ball_search(engine, n_seeds: int = 256) -> dict:
    """Our index vs faiss IndexFlatIP range search for the loosest ball of ``n_seeds`` seeds."""
    from cos3d.query.refine import InstanceIndex, thresholds

    lv = engine._lv(engine.level)
    F = lv.unit_np
    t = float(thresholds(lv.dbar)[0])
    seeds = np.random.default_rng(0).choice(F.shape[0], n_seeds, replace=False)
    t0 = time.perf_counter()
    index = InstanceIndex(lv.unit)
    build_ours = time.perf_counter() - t0
    t0 = time.perf_counter()
    row, gid = index.candidates(F[seeds], t)
    cos = np.einsum("ij,ij->i", F[gid], F[seeds][row])
    hit = cos > t
    ours = time.perf_counter() - t0
    ours_sets = np.bincount(row[hit], minlength=n_seeds)
    out = {"build_ours_s": build_ours, "search_ours_ms": ours * 1e3, "ball_mean": float(ours_sets.mean())}
    try:
        import faiss
    except ImportError:
        out["faiss"] = "not installed (pip install faiss-cpu)"
        return out
    t0 = time.perf_counter()
    fi = faiss.IndexFlatIP(F.shape[1])
    fi.add(np.ascontiguousarray(F, dtype=np.float32))
    build_faiss = time.perf_counter() - t0
    t0 = time.perf_counter()
    lims, D, I = fi.range_search(np.ascontiguousarray(F[seeds], dtype=np.float32), t)
    faiss_s = time.perf_counter() - t0
    faiss_sets = np.diff(lims)
    # the same balls, up to float32 ties at the threshold
    agree = float(np.mean(np.abs(faiss_sets - ours_sets) <= np.maximum(1, 1e-4 * ours_sets)))
    out.update(build_faiss_s=build_faiss, search_faiss_ms=faiss_s * 1e3, same_balls=agree)
    return out


def bench_queries(sizes: list[int]) -> list[dict]:
    from cos3d.vision.registry import create_embedder

    embedder = create_embedder("labels", device="cpu")
    embedder.embed_text(["warm up"])
    rows = []
    for n in sizes:
        engine = synthetic_engine(n, embedder)
        t0 = time.perf_counter()
        first = engine.query(PROMPTS[0])
        first_s = time.perf_counter() - t0
        state = engine.state_dict()
        warm = []
        for p in PROMPTS[1:]:
            t0 = time.perf_counter()
            engine.query(p)
            warm.append((time.perf_counter() - t0) * 1e3)
        fresh = synthetic_engine(n, embedder)
        fresh.cache = engine.cache  # the same text-embedding cache a process keeps: measure the state alone
        t0 = time.perf_counter()
        assert fresh.load_state_dict(state)
        again = fresh.query(PROMPTS[0])
        state_s = time.perf_counter() - t0
        assert torch.equal(first.selected, again.selected)
        row = {"n": n, "first_s": first_s, "state_first_s": state_s, "warm_ms": float(np.median(warm)),
               "warm_ms_max": float(np.max(warm)), "objects": len(first.objects), **ball_search(engine),
               "peak_rss_gib": rss_gib()}
        rows.append(row)
        print(f"{row['n']:>9} {row['first_s']:>8.2f} {row['state_first_s']:>8.2f} {row['warm_ms']:>8.1f} "
              f"{row['objects']:>5} | {row['build_ours_s']:>10.2f} {row['search_ours_ms']:>8.1f} "
              f"{row.get('build_faiss_s', float('nan')):>11.2f} {row.get('search_faiss_ms', float('nan')):>9.1f} "
              f"{row.get('same_balls', float('nan')):>5.2f} | {row['peak_rss_gib']:>7.2f}", flush=True)
        del engine, fresh
    return rows


def bench_train(levels: list[str], threads: int) -> list[dict]:
    rows = []
    for spec in levels:
        views, width = (int(x) for x in spec.split("x"))
        height = width * 3 // 4
        with tempfile.TemporaryDirectory() as tmp:
            scene, run = Path(tmp) / "scene", Path(tmp) / "run"
            cmd = [sys.executable, "-m", "cos3d"]
            subprocess.run(cmd + ["prepare", "tabletop", "--out", str(scene), "--views", str(views), "--width",
                                  str(width), "--height", str(height), "--seed", "21"], check=True,
                           capture_output=True)
            t0 = time.perf_counter()
            r = subprocess.run(cmd + ["train", "--scene", str(scene), "--out", str(run), "--fast", "--no-progress",
                                      "--threads", str(threads)], capture_output=True, text=True)
            wall = time.perf_counter() - t0
            if r.returncode != 0:
                rows.append({"views": views, "size": f"{width}x{height}", "error": r.stderr.strip()[-300:]})
                continue
            rec = json.loads((run / "run.json").read_text())
            st = rec["stages"]
            rows.append({
                "views": views, "size": f"{width}x{height}", "wall_s": wall,
                **{f"{k}_s": st[k]["time_s"] for k in ("recon", "masks", "instance", "language")},
                "weights_mib": st["instance"]["weights_mib"], "n_gaussians": rec["counts"]["n_gaussians"],
                "peak_rss_gib": rec["peak_rss_gib"],
            })
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--sizes", default="25000,250000,1000000", help="Gaussian counts for the query bench")
    ap.add_argument("--train", default="", help="views x width levels for the training bench, e.g. 24x160,96x320")
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    sizes = [int(s) for s in args.sizes.split(",") if s]
    print(f"{'N':>9} {'first s':>8} {'state s':>8} {'warm ms':>8} {'objs':>5} | {'ours build':>10} {'ours ms':>8}"
          f" {'faiss build':>11} {'faiss ms':>9} {'same':>5} | {'RSS GiB':>7}", flush=True)
    q = bench_queries(sizes)  # prints each row as it is measured
    t = bench_train([s for s in args.train.split(",") if s], args.threads) if args.train else []
    if t:
        print(f"\n{'views':>5} {'size':>9} {'wall s':>7} {'stage0':>7} {'masks':>6} {'stage1':>7} {'stage2':>7}"
              f" {'W MiB':>6} {'Gauss':>7} {'RSS GiB':>7}")
        for r in t:
            if "error" in r:
                print(f"{r['views']:>5} {r['size']:>9}  failed: {r['error']}")
                continue
            print(f"{r['views']:>5} {r['size']:>9} {r['wall_s']:>7.1f} {r['recon_s']:>7.1f} {r['masks_s']:>6.1f} "
                  f"{r['instance_s']:>7.1f} {r['language_s']:>7.1f} {r['weights_mib']:>6.0f} {r['n_gaussians']:>7} "
                  f"{r['peak_rss_gib']:>7.2f}")
    big = max(q, key=lambda r: r["n"]) if q else {}
    summary = {
        "device": f"cpu ({platform.processor() or platform.machine()}, {os.cpu_count()} cores, {args.threads} thread(s))",
        "largest_n": big.get("n"),
        "query_warm_ms_1m": big.get("warm_ms") if big.get("n") == 1_000_000 else None,
        "query_first_s_1m": big.get("state_first_s") if big.get("n") == 1_000_000 else None,
        "query_first_s_1m_without_state": big.get("first_s") if big.get("n") == 1_000_000 else None,
        "peak_rss_gib": max([r["peak_rss_gib"] for r in q + t if "peak_rss_gib" in r], default=None),
        "queries": q,
        "train": t,
    }
    print(json.dumps(summary))


if __name__ == "__main__":
    main()
