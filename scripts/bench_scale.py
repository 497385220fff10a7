#!/usr/bin/env python3
"""How cos3d scales: queries as Gaussians grow (25k → 250k → 1M), and training as views and
resolution grow. Prints tables; the last line is one JSON object.

Queries run on a trained field (``--run``, or a 160x120 tabletop trained here with ``--fast``,
oracle-2D) resampled to each N (:func:`resampled_inputs`: a kernel-density resampling that keeps how a
trained field's features spread), with the real engine and the run's own encoder. Per N, in one process:

- ``first_s``: a fresh engine's first text query (it builds the refinement index and the no-target
  calibration), ``state_first_s``: the same with the state a run folder saves (``query_state.pt``);
- ``warm_ms``: the median of distinct prompts on the warm engine (never the same prompt twice); the
  refinement alone, numpy waves vs the compiled loop, side by side on each of those prompts' relevancy;
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
import math
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

ABSENT = ["elephant", "bicycle", "sports car", "tennis racket", "grand piano", "surfboard"]
"""Things on no tabletop: their answers are no-target (no refinement), timed apart from present ones."""


def scene_prompts(scene) -> list[str]:
    """One name per labelled object of the scene (its last training name: a name the field knows, so the
    answer is an object and the whole path runs; these time the engine, they do not score it), distinct,
    highest id first: on a tabletop the first prompt is then a small object and the floor and table (ids
    1, 2: the largest selections, the slowest answers) come last, timed among the warm ones."""
    out = []
    for i in sorted(scene.labels, reverse=True):
        names = scene.names_of(i)
        if names and names[-1] not in out:
            out.append(names[-1])
    return out


def rss_gib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20


def feature_bandwidth(unit: torch.Tensor, sample: int = 2000, seed: int = 0) -> float:
    """Median angle (radians) from a Gaussian's instance feature to its nearest other Gaussian's, over a
    sample: the spacing of the trained field's features, used as the resampling kernel's width."""
    g = torch.Generator().manual_seed(seed)
    idx = torch.randperm(unit.shape[0], generator=g)[:sample]
    cos = unit[idx] @ unit.T
    cos[torch.arange(len(idx)), idx] = -2.0  # not itself
    return float(torch.arccos(cos.max(1).values.clamp(-1, 1)).median())


def resampled_inputs(run: Path, n: int, seed: int = 0, kernel: float = 0.5):
    """The run's trained scene resampled to ``n`` Gaussians (:class:`QueryInputs`).

    A kernel-density resampling of the trained field, so that a 1M-Gaussian field has the statistics of a
    trained one (how its features spread within and between objects), not those of a made-up one: every
    trained Gaussian is kept, and each extra one copies a random trained Gaussian ("parent"): its position
    drawn within the parent's own footprint (its rotated scales), its scales shrunk so the total volume
    stays the same, its opacity and colour, its language feature, and its instance feature turned by
    noise of ``kernel`` times the field's nearest-neighbour feature spacing (:func:`feature_bandwidth`;
    0 = exact copies, as a densification split leaves them, 0.5 = the default). The kernel decides how many
    copies share a refinement ball, so it bounds the timings from both sides: say which was used.
    """
    import cos3d
    from cos3d.data.gaussians import Gaussians
    from cos3d.query.engine import QueryInputs
    from cos3d.core.rotations import quat_to_rotmat
    from cos3d.field.level import LevelField

    ts = cos3d.load(run, device="cpu", segmenter="none")
    g0 = ts.gaussians
    n0 = g0.num
    gen = torch.Generator().manual_seed(seed)
    parent = torch.cat([torch.arange(n0), torch.randint(0, n0, (max(0, n - n0),), generator=gen)])[:n]
    extra = torch.arange(n) >= n0
    shrink = math.log(max(n / n0, 1.0)) / 3.0
    scales = g0.log_scales.exp()[parent]
    offset = (quat_to_rotmat(g0.quats[parent]) @ (scales * torch.randn(n, 3, generator=gen)).unsqueeze(-1)).squeeze(-1)
    means = g0.means[parent] + extra[:, None] * offset
    gs = Gaussians(means=means, quats=g0.quats[parent], log_scales=g0.log_scales[parent] - extra[:, None] * shrink,
                   opacity_logits=g0.opacity_logits[parent], sh=g0.sh[parent])
    fields = {}
    for level, f in ts.fields.items():
        unit = torch.nn.functional.normalize(f.instance.float(), dim=1)
        d = unit.shape[1]
        sigma = math.tan(kernel * feature_bandwidth(unit)) / math.sqrt(d - 1)
        inst = unit[parent] + extra[:, None] * sigma * torch.randn(n, d, generator=gen)
        fields[level] = LevelField(instance=torch.nn.functional.normalize(inst, dim=1), language=f.language[parent],
                                   anchors=f.anchors, targets=f.targets, dbar=f.dbar)
    return QueryInputs(scene=ts.scene, gaussians=gs, fields=fields, embedder=ts.embedder), n0


def write_resampled_run(run: Path, inputs, out: Path) -> Path:
    """A run folder at ``out`` holding the resampled field ``inputs`` (:func:`resampled_inputs`): the run's
    record, the resampled ``gaussians.ply`` and ``fields.pt``, and the query state saved as ``cos3d train``
    saves it — what a trained 1M-Gaussian run would hold."""
    import shutil

    import cos3d
    from cos3d.data.ply import write_ply
    from cos3d.pipeline.run_folder import RunFolder

    out.mkdir(parents=True, exist_ok=True)
    shutil.copy2(run / "run.json", out / "run.json")
    write_ply(out / "gaussians.ply", inputs.gaussians, features=False)
    data = RunFolder(run).read_fields()
    data.n_gaussians = inputs.gaussians.num
    for level, f in inputs.fields.items():
        data.levels[level].instance = f.instance.float()
        data.levels[level].language = f.language.half()
    RunFolder(out).write_fields(data)
    cos3d.load(out, device="cpu", segmenter="none").save_query_state()
    return out


def fresh_processes(run_dir: Path, prompts: list[str], threads: int) -> tuple[list[float], list[float]]:
    """One ``cos3d query PROMPT --run RUN --json`` process per prompt (distinct prompts): ``(wall seconds of
    each process — imports, reading the run and its saved query state, the query, printing —, the query's
    own milliseconds as it reports them)``."""
    env = dict(os.environ, OMP_NUM_THREADS=str(threads))
    walls, query_ms = [], []
    for p in prompts:
        t0 = time.perf_counter()
        out = subprocess.run([sys.executable, "-m", "cos3d", "query", p, "--run", str(run_dir), "--json"],
                             check=True, capture_output=True, text=True, env=env)
        walls.append(time.perf_counter() - t0)
        query_ms.append(float(json.loads(out.stdout)["timings"]["total"]))
    return walls, query_ms


def train_small_run(workdir: Path, threads: int) -> Path:
    """A 160x120 tabletop (seed 0) trained with ``--fast`` under oracle-2D, reused when present."""
    run = workdir / "run"
    if (run / "run.json").is_file() and (run / "fields.pt").is_file():
        return run
    cmd = [sys.executable, "-m", "cos3d"]
    scene = workdir / "scene"
    if not (scene / "splits.json").is_file():
        subprocess.run(cmd + ["prepare", "tabletop", "--out", str(scene), "--width", "160", "--height", "120",
                              "--seed", "0", "--force"], check=True)
    subprocess.run(cmd + ["train", "--scene", str(scene), "--out", str(run), "--fast", "--masks", "dataset",
                          "--embedder", "labels", "--no-progress", "--threads", str(threads), "--restart"], check=True)
    return run


def ball_search(engine, n_seeds: int = 256) -> dict:
    """Our index vs faiss IndexFlatIP range search for the loosest ball of ``n_seeds`` seeds."""
    from cos3d.query.refine import InstanceIndex, _balls_by_matmul, thresholds

    lv = engine.level_state(engine.level)
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
    # no index at all: refinement's own matmul path (one float32 matmul against every feature, in chunks)
    t0 = time.perf_counter()
    brute_row = _balls_by_matmul(F, F[seeds], t)[0]
    brute_sets = np.bincount(brute_row, minlength=n_seeds)
    out["search_brute_ms"] = (time.perf_counter() - t0) * 1e3
    out["same_balls_brute"] = float(np.mean(np.abs(brute_sets - ours_sets) <= np.maximum(1, 1e-4 * ours_sets)))
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


def refine_side_by_side(engine, prompts: list[str], warm_up: str) -> dict:
    """The refinement alone, numpy waves vs the compiled loop, on each prompt's own relevancy (the same ``r``
    for both; distinct prompts): medians in ms, and whether every selection agreed. The compiled loop is
    compiled (or loaded from numba's cache) on ``warm_up`` first: that is a process's cost, not a query's."""
    from cos3d.query.relevancy import normalize_relevancy

    times: dict[str, list[float]] = {"numpy": [], "compiled": []}
    agree = True
    # the numpy waves keep the balls they compute on the index: start empty, so each prompt finds only the
    # balls of the earlier (distinct) prompts, as on a warm engine, never its own from the warm queries
    engine.index().ball_graphs.clear()
    engine.refine(normalize_relevancy(engine.relevancy(engine.embed_text([warm_up]))[0]), method="compiled")
    for p in prompts:
        r = normalize_relevancy(engine.relevancy(engine.embed_text([p]))[0])
        picked = {}
        for method in ("compiled", "numpy"):
            t0 = time.perf_counter()
            picked[method] = engine.refine(r, method=method).selected
            times[method].append((time.perf_counter() - t0) * 1e3)
        agree &= bool(torch.equal(picked["numpy"], picked["compiled"]))
    return {"refine_numpy_ms": float(np.median(times["numpy"])), "refine_compiled_ms": float(np.median(times["compiled"])),
            "refine_same_selection": agree}


def bench_queries(run: Path, sizes: list[int], n_warm: int, kernel: float = 0.5,
                  fresh_dir: Path | None = None, threads: int = 1) -> list[dict]:
    from cos3d.query.engine import QueryEngine

    rows = []
    for n in sizes:
        inputs, n0 = resampled_inputs(run, n, kernel=kernel)
        present = scene_prompts(inputs.scene)
        if len(present) < 2:
            raise SystemExit(f"{run}: the scene needs at least 2 labelled objects for the query bench")
        engine = QueryEngine(inputs)
        engine.embedder.embed_text(["warm up"])  # the encoder's own first-call cost is not the index's
        t0 = time.perf_counter()
        first = engine.query(present[0])
        first_s = time.perf_counter() - t0
        state = engine.state_dict()
        warm, warm_absent, objects = [], [], []
        for p in present[1 : 1 + n_warm]:
            t0 = time.perf_counter()
            r = engine.query(p)
            warm.append((time.perf_counter() - t0) * 1e3)
            objects.append(len(r.objects))
        for p in ABSENT:
            t0 = time.perf_counter()
            engine.query(p)
            warm_absent.append((time.perf_counter() - t0) * 1e3)
        refiners = refine_side_by_side(engine, present[1 : 1 + n_warm], warm_up=present[0])
        fresh = QueryEngine(inputs)
        fresh.cache = engine.cache  # the text embeddings a process keeps: time the state alone
        t0 = time.perf_counter()
        assert fresh.load_state_dict(state)
        again = fresh.query(present[0])
        state_s = time.perf_counter() - t0
        assert torch.equal(first.selected, again.selected)
        row = {"n": n, "trained_n": n0, "first_prompt": present[0], "first_s": first_s, "state_first_s": state_s,
               "warm_prompts": present[1 : 1 + n_warm], "warm_each_ms": [round(w, 1) for w in warm],
               "warm_ms": float(np.median(warm)), **refiners,
               "warm_ms_max": float(np.max(warm)), "warm_absent_ms": float(np.median(warm_absent)),
               "answered_with_objects": int(sum(o > 0 for o in objects)), "first_objects": len(first.objects),
               "selected": int(first.selected.numel()), **ball_search(engine), "peak_rss_gib": rss_gib()}
        if fresh_dir is not None:  # whole processes on the resampled run written to disk (3 distinct prompts)
            run_n = write_resampled_run(run, inputs, fresh_dir / f"run_{n}")
            walls, query_ms = fresh_processes(run_n, present[-3:][::-1], threads)
            row.update(fresh_process_s=walls, fresh_process_query_ms=query_ms, fresh_process_prompts=present[-3:][::-1],
                       run_bytes=sum(f.stat().st_size for f in run_n.iterdir() if f.is_file()))
        rows.append(row)
        print(f"{row['n']:>9} {row['first_s']:>8.2f} {row['state_first_s']:>8.2f} {row['warm_ms']:>8.1f} "
              f"{row['warm_ms_max']:>8.1f} {row['warm_absent_ms']:>7.1f} {row['answered_with_objects']:>3}/{len(warm):<2}| "
              f"{row['refine_numpy_ms']:>8.0f} {row['refine_compiled_ms']:>8.0f} | {row['build_ours_s']:>10.2f} {row['search_ours_ms']:>8.1f} "
              f"{row.get('build_faiss_s', float('nan')):>11.2f} {row.get('search_faiss_ms', float('nan')):>9.1f} "
              f"{row.get('same_balls', float('nan')):>5.2f} {row['search_brute_ms']:>8.1f} {row['ball_mean']:>7.0f} | "
              f"{row['peak_rss_gib']:>7.2f}", flush=True)
        del engine, fresh, inputs
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
    ap.add_argument("--run", type=Path, default=None,
                    help="trained run whose field is resampled for the query bench (default: train a 160x120 "
                         "tabletop with --fast in --workdir)")
    ap.add_argument("--workdir", type=Path, default=Path("bench_scale_work"))
    ap.add_argument("--kernel", type=float, default=0.5,
                    help="resampling kernel, a fraction of the field's nearest-neighbour feature spacing (0: copies)")
    ap.add_argument("--warm", type=int, default=8, help="distinct warm prompts (scene objects) per size")
    ap.add_argument("--fresh-process", action="store_true",
                    help="also write each resampled field as a run folder under --workdir and time whole "
                         "`cos3d query` processes on it (3 distinct prompts)")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    sizes = [int(s) for s in args.sizes.split(",") if s]
    q = []
    if sizes:
        run = args.run or train_small_run(args.workdir, args.threads)
        print(f"query bench on {run} resampled with kernel {args.kernel} (oracle-2D field, labels encoder)")
        print(f"{'N':>9} {'first s':>8} {'state s':>8} {'warm ms':>8} {'max ms':>8} {'absent':>7} {'hit':>6}| {'np ref':>8} {'nb ref':>8} | {'ours build':>10}"
              f" {'ours ms':>8} {'faiss build':>11} {'faiss ms':>9} {'same':>5} {'brute ms':>8} {'ball':>7} | {'RSS GiB':>7}",
              flush=True)
        q = bench_queries(run, sizes, args.warm, args.kernel, fresh_dir=args.workdir if args.fresh_process else None,
                          threads=args.threads)  # prints each row as it is measured
        for r in q:
            if "fresh_process_s" in r:
                print(f"{r['n']:>9}: whole `cos3d query` processes {', '.join(f'{w:.2f}' for w in r['fresh_process_s'])} s, "
                      f"their queries {', '.join(f'{q:.0f}' for q in r['fresh_process_query_ms'])} ms "
                      f"({', '.join(r['fresh_process_prompts'])}; run folder {r['run_bytes'] / 2**20:.0f} MiB)")
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
        "kernel": args.kernel,
        "largest_n": big.get("n"),
        "query_warm_ms_1m": big.get("warm_ms") if big.get("n") == 1_000_000 else None,
        "query_first_s_1m": big.get("state_first_s") if big.get("n") == 1_000_000 else None,
        "query_first_s_1m_without_state": big.get("first_s") if big.get("n") == 1_000_000 else None,
        "query_fresh_process_s_1m": (float(np.median(big["fresh_process_s"]))
                                     if big.get("n") == 1_000_000 and "fresh_process_s" in big else None),
        "query_fresh_process_query_ms_1m": (float(np.median(big["fresh_process_query_ms"]))
                                            if big.get("n") == 1_000_000 and "fresh_process_s" in big else None),
        "peak_rss_gib": max([r["peak_rss_gib"] for r in q + t if "peak_rss_gib" in r], default=None),
        "queries": q,
        "train": t,
    }
    print(json.dumps(summary))


if __name__ == "__main__":
    main()
