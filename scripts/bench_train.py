#!/usr/bin/env python
"""Benchmark ``cos3d train`` per stage on a tabletop, and stage 1's cached-weights speed-up.

    python scripts/bench_train.py                       # generate a tabletop, train it (--fast), measure
    python scripts/bench_train.py --scene data/tt --steps 20 --device cuda

Stage times come from one ``cos3d train --fast`` run (run.json). The speed-up compares, in this same
process, on the same Gaussians, views, masks and initial features, N stage-1 steps done two ways:

- cached: per-view blending weights recorded once (``compute_contributions`` → CSR W and Wᵀ), then
  each step is a sparse product (what ``cos3d train`` does);
- rasterized: each step renders the feature map with ``cos3d.render.render`` (forward + backward
  through the rasterizer: gsplat on CUDA, the torch rasterizer on CPU).

It reports the per-step speed-up (``--steps`` steps each way over ``--speedup-views`` views) and, measured
rather than projected, the **whole stage 1** both ways (``--whole-stage``, default on): every training
view's weights built, then the run's stage-1 iteration count of cached steps, against the same number of
rasterized steps; the cached side includes the build. The last line printed is one JSON object.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
import tempfile
import time
from pathlib import Path


def _sync(device) -> None:
    import torch

    if device.type == "cuda":
        torch.cuda.synchronize(device)


def measure_speedup(run_dir: Path, steps: int, n_views: int, device_name: str, seed: int = 0) -> dict:
    """Time ``steps`` stage-1 steps with cached weights and with per-step rasterization."""
    import torch

    from cos3d.field.contrastive import cluster_loss, make_clusters, unit_rows
    from cos3d.field.instance import InstanceConfig
    from cos3d.field.view_weights import ViewWeights
    from cos3d.data.ply import read_ply
    from cos3d.readers import load_scene
    from cos3d.render import compute_contributions, render
    from cos3d.vision import load_view

    device = torch.device(device_name)
    record = json.loads((run_dir / "run.json").read_text())
    scene = load_scene(record["scene"])
    g = read_ply(run_dir / "gaussians.ply", features=False).to(device)
    frames = scene.split("train")[:n_views]
    levels = ["l", "s"]
    cfg = InstanceConfig()
    D, L, N = cfg.dim, len(levels), g.num
    labels = []
    for f in frames:
        ms, _ = load_view(record["stages"]["masks"]["cache"], f)
        labels.append({lev: torch.from_numpy(ms.label_map(lev)).reshape(-1).to(device) for lev in levels})

    def make_opt():
        gen = torch.Generator().manual_seed(seed)
        p = torch.nn.Parameter((torch.randn(N, L * D, generator=gen) * cfg.init_std).to(device))
        try:
            opt = torch.optim.Adam([p], lr=cfg.lr, fused=True)
        except (RuntimeError, TypeError, ValueError):
            opt = torch.optim.Adam([p], lr=cfg.lr)
        return p, opt

    def loss_of(rendered, clusters):
        loss = rendered.new_zeros(())
        for li in range(L):
            nce, norm_term, _ = cluster_loss(rendered[:, li * D : (li + 1) * D], clusters[li])
            loss = loss + nce + cfg.norm_weight * norm_term
        return loss

    # cached: build, then steps
    _sync(device)
    t0 = time.perf_counter()
    views = []
    for f in frames:
        c = compute_contributions(g, f.camera)
        views.append(ViewWeights.from_contributions(c, N, chunk_size=cfg.n_samples, seed=seed, name=f.name))
    _sync(device)
    build_s = time.perf_counter() - t0
    # the same (view, pixel chunk) sequence and clusters for both ways; a chunk holds <= 32768 pixels
    pairs = [
        (v, c) for c in range(max(len(vw.chunks) for vw in views)) for v, vw in enumerate(views) if c < len(vw.chunks)
    ]
    clusters = {
        (v, c): [make_clusters(labels[v][lev][views[v].chunks[c].pixels], cfg.min_cluster) for lev in levels]
        for v, c in pairs
    }
    p, opt = make_opt()

    def cached_step(i):
        v, c = pairs[i % len(pairs)]
        cols = views[v].chunks[c].cols  # as in training: only the chunk's Gaussians are normalised
        unit = unit_rows(p[cols].view(-1, L, D)).view(-1, L * D)
        loss = loss_of(views[v].render_chunk(c, unit, local=True), clusters[(v, c)])
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    for i in range(2):  # warm-up
        cached_step(i)
    _sync(device)
    t0 = time.perf_counter()
    for i in range(steps):
        cached_step(i)
    _sync(device)
    cached_s = time.perf_counter() - t0

    # rasterized: render the whole feature map every step, then take the same sampled pixels
    p, opt = make_opt()

    def raster_step(i):
        v, c = pairs[i % len(pairs)]
        unit = unit_rows(p.view(N, L, D)).view(N, L * D)
        out = render(g, frames[v].camera, features=unit, render_rgb=False)
        rendered = out.features[0].reshape(-1, L * D)[views[v].chunks[c].pixels]
        loss = loss_of(rendered, clusters[(v, c)])
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    raster_step(0)  # warm-up
    _sync(device)
    t0 = time.perf_counter()
    for i in range(steps):
        raster_step(i)
    _sync(device)
    raster_s = time.perf_counter() - t0
    mem = sum(vw.nbytes for vw in views)
    return {
        "steps": steps,
        "views": len(frames),
        "cache_build_s": build_s,
        "cached_step_ms": cached_s / steps * 1e3,
        "raster_step_ms": raster_s / steps * 1e3,
        "stage1_speedup": raster_s / cached_s,
        "speedup_incl_build": raster_s / (cached_s + build_s),
        "nnz_per_pixel": sum(vw.nnz for vw in views)
        / max(1, sum(int(c.pixels.numel()) for vw in views for c in vw.chunks)),
        "weights_mib_per_view": mem / len(views) / 2**20,
        "n_gaussians": N,
    }


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--scene", type=Path, default=None, help="a scene folder (default: generate a tabletop)")
    ap.add_argument("--work", type=Path, default=None, help="working folder (default: a temporary one)")
    ap.add_argument("--views", type=int, default=20, help="generated tabletop: views (default 20)")
    ap.add_argument("--width", type=int, default=320, help="generated tabletop: width (default 320)")
    ap.add_argument("--height", type=int, default=240, help="generated tabletop: height (default 240)")
    ap.add_argument("--tabletop-seed", type=int, default=3)
    ap.add_argument("--device", default="auto", help="auto, cpu, cuda")
    ap.add_argument("--iterations", type=int, default=None, help="stage-1 iterations (default: the --fast preset)")
    ap.add_argument("--recon-iterations", type=int, default=None, help="override stage 0's iterations")
    ap.add_argument("--steps", type=int, default=10, help="stage-1 steps timed each way for the speed-up")
    ap.add_argument("--speedup-views", type=int, default=4, help="training views cycled in the speed-up test")
    ap.add_argument("--threads", type=int, default=None, help="torch CPU threads for everything (default: torch's)")
    ap.add_argument("--skip-train", action="store_true", help="reuse WORK/run (already trained)")
    ap.add_argument("--whole-stage", action=argparse.BooleanOptionalAction, default=True,
                    help="also time the whole stage 1 both ways (all training views, the run's iterations)")
    args = ap.parse_args(argv)

    import torch

    from cos3d.core.config import apply_config
    from cos3d.pipeline.runner import train
    from cos3d.pipeline.train_config import TrainConfig

    if args.threads:
        torch.set_num_threads(args.threads)
    device = ("cuda" if torch.cuda.is_available() else "cpu") if args.device == "auto" else args.device
    work = args.work or Path(tempfile.mkdtemp(prefix="cos3d-bench-"))
    work.mkdir(parents=True, exist_ok=True)
    t_gen = 0.0
    if args.scene is None:
        from cos3d.tabletop import TabletopConfig, generate_tabletop

        scene = work / "scene"
        if not (scene / "splits.json").is_file():
            t0 = time.perf_counter()
            generate_tabletop(
                TabletopConfig(
                    out=scene,
                    seed=args.tabletop_seed,
                    views=args.views,
                    width=args.width,
                    height=args.height,
                    force=True,
                )
            )
            t_gen = time.perf_counter() - t0
    else:
        scene = args.scene
    run_dir = work / "run"
    if not args.skip_train:
        cfg = apply_config(
            TrainConfig(
                scene=str(scene),
                out=run_dir,
                iterations=args.iterations,
                device=device,
                threads=args.threads,
                progress=False,
            ),
            "fast",
        )
        if args.recon_iterations is not None:
            n = args.recon_iterations
            cfg.recon = dataclasses.replace(
                cfg.recon, iterations=n, refine_stop=min(1200, max(0, n - 50)), refine_start=min(300, max(0, n // 4))
            )
        train(cfg, config_files=("fast",))
    record = json.loads((run_dir / "run.json").read_text())
    st = record["stages"]
    from cos3d.readers import load_scene

    cam0 = load_scene(record["scene"]).frames[0].camera
    record_size = (cam0.width, cam0.height)
    sp = measure_speedup(run_dir, args.steps, args.speedup_views, device)
    iters = int(st["instance"].get("iterations") or 0)
    n_train = int(record["counts"].get("n_views") or sp["views"])
    whole = None
    if args.whole_stage and iters:
        # measured, not projected: all training views' weights built + `iters` cached steps, vs `iters`
        # rasterized steps, on the same Gaussians, views, pixel samples and clusters
        whole = measure_speedup(run_dir, iters, n_train, device)
        whole["cached_total_s"] = whole["cache_build_s"] + whole["cached_step_ms"] * iters / 1e3
        whole["raster_total_s"] = whole["raster_step_ms"] * iters / 1e3

    rows = [
        ("tabletop generation", t_gen),
        ("stage 0 gaussians", st["recon"]["time_s"]),
        ("masks + embeddings", st["masks"]["time_s"]),
        ("stage 1 instance", st["instance"]["time_s"]),
        ("  of which view weights", st["instance"].get("weights_build_s", float("nan"))),
        ("stage 2 language", st["language"]["time_s"]),
    ]
    print(
        f"\ncos3d train --fast on {scene} ({device}; {record['counts'].get('n_gaussians')} Gaussians, "
        f"{record['counts'].get('n_views')} training views, {st['instance'].get('iterations')} stage-1 iterations)"
    )
    print(f"{'stage':28s} {'seconds':>10s}")
    for name, sec in rows:
        print(f"{name:28s} {sec:10.2f}")
    print(f"held-out PSNR (stage 0): {record.get('metrics', {}).get('psnr_test')}")
    print(
        f"\nstage-1 step at {record_size[0]}x{record_size[1]}, {sp['steps']} steps each way over {sp['views']} views "
        "(same Gaussians, pixel samples, clusters and initial features):"
    )
    print(f"{'cached weights':28s} {sp['cached_step_ms']:10.2f} ms/step  (+ {sp['cache_build_s']:.2f} s to build)")
    print(f"{'rasterize every step':28s} {sp['raster_step_ms']:10.2f} ms/step")
    if whole is not None:
        print(
            f"whole stage 1, measured ({iters} iterations over {whole['views']} views): cached weights "
            f"{whole['cached_total_s']:.1f} s (of which {whole['cache_build_s']:.1f} s building the weights), "
            f"rasterizing {whole['raster_total_s']:.1f} s: {whole['speedup_incl_build']:.2f}x"
        )
    print(
        f"speed-up per step {sp['stage1_speedup']:.1f}x; over these {sp['steps']} steps with the cache build included "
        f"{sp['speedup_incl_build']:.1f}x "
        f"({sp['nnz_per_pixel']:.1f} weights per pixel, {sp['weights_mib_per_view']:.1f} MiB per view)"
    )
    out = {
        "stage0_s": st["recon"]["time_s"],
        "masks_s": st["masks"]["time_s"],
        "stage1_s": st["instance"]["time_s"],
        "stage2_s": st["language"]["time_s"],
        "stage1_speedup": round(sp["stage1_speedup"], 2),
        "stage1_speedup_incl_build": round(sp["speedup_incl_build"], 2),
        "stage1_speedup_whole_stage": None if whole is None else round(whole["speedup_incl_build"], 2),
        "stage1_whole_cached_s": None if whole is None else round(whole["cached_total_s"], 2),
        "stage1_whole_raster_s": None if whole is None else round(whole["raster_total_s"], 2),
        "stage1_whole_views": None if whole is None else whole["views"],
        "cached_step_ms": round(sp["cached_step_ms"], 2),
        "raster_step_ms": round(sp["raster_step_ms"], 2),
        "cache_build_s": round(sp["cache_build_s"], 3),
        "speedup_steps": sp["steps"],
        "width": record_size[0],
        "height": record_size[1],
        "stage1_iterations": st["instance"].get("iterations"),
        "weights_build_s": st["instance"].get("weights_build_s"),
        "n_gaussians": record["counts"].get("n_gaussians"),
        "n_views": record["counts"].get("n_views"),
        "psnr_test": record.get("metrics", {}).get("psnr_test"),
        "device": device,
        "threads": torch.get_num_threads(),
    }
    print(json.dumps(out))
    return 0


if __name__ == "__main__":
    sys.exit(main())
