#!/usr/bin/env python
"""Benchmark cos3d.render: ms per forward and forward+backward.

Grid: N Gaussians × resolution × rendered width D (``rgb``: SH degree 3 → 3 channels; ``fD``: a
D-wide feature, no colour), on the torch rasterizer (CPU) and, when CUDA is available, on gsplat.
For features on the CPU it also times the frozen-geometry path of stage 1: building the
contributions of a view, and one W@F forward+backward through :meth:`cos3d.render.Contributions.render`.

The scene is synthetic but surface-like (DESIGN.md's probe used trained scenes): half the Gaussians
on a sphere, half on a ground plane, footprints sized to cover the surfaces, opacities ~0.9, seen
from 2.5 m. Prints a table and, as its last line, one JSON object with every measurement.

    GLIBC_TUNABLES=glibc.malloc.hugetlb=1 python scripts/bench_render.py --threads 1
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import statistics
import time

import numpy as np
import torch

from cos3d.data.gaussians import Gaussians
from cos3d.render import compute_contributions, render
from cos3d.data.scene import Camera


def surface_scene(n: int, seed: int = 0) -> Gaussians:
    gen = torch.Generator().manual_seed(seed)
    n1 = n // 2
    d = torch.randn(n1, 3, generator=gen)
    sphere = 0.5 * d / d.norm(dim=1, keepdim=True)
    plane = torch.cat([(torch.rand(n - n1, 2, generator=gen) * 2 - 1) * 1.5, torch.full((n - n1, 1), -0.5)], 1)
    means = torch.cat([sphere, plane])
    area = 4 * math.pi * 0.25 + 9.0
    s = math.sqrt(area / n) * 0.6
    log_scales = torch.log(torch.full((n, 3), s)) + 0.3 * torch.randn(n, 3, generator=gen)
    quats = torch.randn(n, 4, generator=gen)
    op = torch.randn(n, generator=gen) * 0.5 + 2.2  # sigmoid ≈ 0.9
    sh = torch.randn(n, 16, 3, generator=gen) * 0.3
    sh[:, 1:] *= 0.1
    return Gaussians(means, quats, log_scales, op, sh)


def camera(w: int, h: int) -> Camera:
    eye = np.array([2.2, 0.6, 1.0])
    f = -eye / np.linalg.norm(eye)
    r = np.cross(f, [0, 0, 1.0])
    r /= np.linalg.norm(r)
    c2w = np.eye(4)
    c2w[:3, 0], c2w[:3, 1], c2w[:3, 2], c2w[:3, 3] = r, np.cross(f, r), f, eye
    K = np.array([[0.9 * w, 0, (w - 1) / 2], [0, 0.9 * w, (h - 1) / 2], [0, 0, 1]])
    return Camera(K, c2w, w, h)


def timeit(fn, repeat: int, sync) -> float:
    fn()
    sync()
    ts = []
    for _ in range(repeat):
        t = time.perf_counter()
        fn()
        sync()
        ts.append(time.perf_counter() - t)
    return 1e3 * statistics.median(ts)


def bench_one(backend: str, device: str, n: int, w: int, h: int, width: str, repeat: int) -> dict:
    g = surface_scene(n).to(device)
    cam = camera(w, h)
    sync = torch.cuda.synchronize if device == "cuda" else (lambda: None)
    rgb = width == "rgb"
    d = 3 if rgb else int(width[1:])
    feats = None if rgb else torch.randn(n, d, generator=torch.Generator().manual_seed(1)).to(device)
    leaves = [g.means, g.quats, g.log_scales, g.opacity_logits, g.sh] + ([] if feats is None else [feats])

    def fwd():
        with torch.no_grad():
            return render(g, cam, features=feats, render_rgb=rgb, backend=backend)

    def fwd_bwd():
        for t in leaves:
            t.requires_grad_(True)
            t.grad = None
        out = render(g, cam, features=feats, render_rgb=rgb, backend=backend)
        img = out.rgb if rgb else out.features
        (img.sum() + out.alpha.sum()).backward()
        for t in leaves:
            t.requires_grad_(False)

    row = {"backend": backend, "device": device, "n": n, "width": w, "height": h, "channels": width,
           "fwd_ms": timeit(fwd, repeat, sync), "fwd_bwd_ms": timeit(fwd_bwd, repeat, sync)}  # fmt: skip
    out = fwd()
    row["alpha_mean"] = float(out.alpha.mean())
    if feats is not None and backend == "torch":
        c = None

        def build():
            nonlocal c
            c = compute_contributions(g, cam)

        row["contrib_build_ms"] = timeit(build, max(1, repeat // 2), sync)
        f = feats.clone().requires_grad_(True)

        def wf():
            f.grad = None
            c.render(f).sum().backward()

        c.matrix(), c.matrix_t()
        row["contrib_wf_fwd_bwd_ms"] = timeit(wf, repeat, sync)
        row["contrib_per_pixel"] = c.nnz / (w * h)
    return row


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--n", type=int, nargs="+", default=[10_000, 50_000])
    ap.add_argument("--res", nargs="+", default=["160x120", "320x240"])
    ap.add_argument("--channels", nargs="+", default=["rgb", "f16"], help="rgb or fD (D-wide features)")
    ap.add_argument("--repeat", type=int, default=5)
    ap.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's)")
    ap.add_argument("--no-cpu", action="store_true")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    runs = [] if args.no_cpu else [("torch", "cpu")]
    if torch.cuda.is_available():
        runs += [("gsplat", "cuda"), ("torch", "cuda")]
    rows = []
    hdr = f"{'backend':8} {'device':6} {'N':>7} {'res':>8} {'ch':>4} {'fwd ms':>9} {'fwd+bwd ms':>11} {'W build':>8} {'W@F f+b':>8}"
    print(hdr)
    print("-" * len(hdr))
    for backend, device in runs:
        for n in args.n:
            for res in args.res:
                w, h = (int(x) for x in res.split("x"))
                for ch in args.channels:
                    r = bench_one(backend, device, n, w, h, ch, args.repeat)
                    rows.append(r)
                    wb = f"{r['contrib_build_ms']:.0f}" if "contrib_build_ms" in r else "-"
                    wf = f"{r['contrib_wf_fwd_bwd_ms']:.1f}" if "contrib_wf_fwd_bwd_ms" in r else "-"
                    print(f"{backend:8} {device:6} {n:>7} {res:>8} {ch:>4} {r['fwd_ms']:>9.1f} {r['fwd_bwd_ms']:>11.1f} {wb:>8} {wf:>8}", flush=True)
    machine = {
        "platform": platform.platform(),
        "cpu": platform.processor() or platform.machine(),
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "cuda": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
        "glibc_tunables": os.environ.get("GLIBC_TUNABLES"),
    }
    print(json.dumps({"machine": machine, "results": rows}))


if __name__ == "__main__":
    main()
