#!/usr/bin/env python
"""Benchmark ``cos3d prepare masks`` on Ray: views/s with 1 and 2 workers, and the per-view costs
from which docs/benchmarks.md projects the scaling on N GPUs.

    python scripts/bench_ray.py                                  # tabletop 24 views 320x240, three model sets
    python scripts/bench_ray.py --models classical --views 48 --workers 1,2
    python scripts/bench_ray.py --scene data/tt --models oracle

Model sets (all offline):

- ``oracle``: dataset masks + labels embedder (oracle-2D; the cheapest per view);
- ``classical``: felzenszwalb superpixel masks + a tiny randomly initialised OpenCLIP (one crop per mask);
- ``sam2``: SAM2.1 hiera-tiny with random weights (the real automatic-mask code path: image encoder,
  ``--points-per-side`` prompts, NMS) at ``--sam2-image-size`` + the tiny OpenCLIP.

For each set: the local executor (views one after another in this process: the per-view cost), then
Ray with each worker count on a fresh cache. Ray numbers: ``wall`` (everything: actor start-up and
model loading included), ``startup`` (until the first view came back), ``steady`` views/s (views after
the first over the time from the first to the last). It also measures the Ray round trip of an empty
actor call (the driver's dispatch cost per view) and the mean size of a view file. Ray runs as a local
cluster on 127.0.0.1 with ``--cpus`` CPUs. The last line printed is one JSON object.
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path


def make_factory(kind: str, work: Path, args: argparse.Namespace):
    from cos3d.distributed.masks import ModelsFactory
    from cos3d.vision.models import ModelsConfig

    if kind == "oracle":
        return ModelsFactory(ModelsConfig(masks="dataset", embedder="labels"))
    from cos3d.testing.vision import write_random_sam2_checkpoint, write_tiny_openclip

    clip_cfg, clip_ckpt = write_tiny_openclip(work / "clip")
    if kind == "classical":
        return ModelsFactory(ModelsConfig(masks="classical", embedder="openclip", clip_model=str(clip_cfg),
                                          clip_checkpoint=clip_ckpt))
    ckpt = write_random_sam2_checkpoint(work / "sam2" / "sam2.1_hiera_tiny.pt")
    return ModelsFactory(ModelsConfig(
        masks="sam2", embedder="openclip", sam2_checkpoint=ckpt, sam2_config="configs/sam2.1/sam2.1_hiera_t.yaml",
        points_per_side=args.points_per_side, sam2_image_size=args.sam2_image_size,
        pred_iou_thresh=0.0, stability_thresh=0.0, clip_model=str(clip_cfg), clip_checkpoint=clip_ckpt))


def bench_local(scene, names, factory, cache: Path) -> dict:
    import torch

    from cos3d.vision.cache import manifest_header, open_manifest, close_manifest, process_view

    torch.set_num_threads(1)  # as a Ray worker with num_cpus=1
    t0 = time.perf_counter()
    provider, embedder = factory(scene, "cpu")
    t_models = time.perf_counter() - t0
    header = manifest_header(provider, embedder)
    man = open_manifest(cache, header, scene.root)
    secs, masks = [], 0
    for n in names:
        out = process_view(scene.frame(n), provider, embedder, cache, header["models_key"])
        secs.append(out.seconds)
        masks += out.masks
    close_manifest(cache, man, names)
    sizes = [p.stat().st_size for p in (cache / "views").glob("*.npz")]
    return {
        "models_load_s": round(t_models, 2),
        "per_view_s": round(statistics.mean(secs), 4),
        "per_view_s_median": round(statistics.median(secs), 4),
        "views_per_s": round(len(secs) / sum(secs), 3),
        "masks_per_view": round(masks / len(names), 1),
        "view_file_kib": round(statistics.mean(sizes) / 1024, 1),
    }


def bench_ray(scene_root: Path, names, factory, cache: Path, workers: int) -> dict:
    from cos3d.distributed.masks import prepare_masks_ray

    stamps: list[float] = []
    t0 = time.perf_counter()
    stats, _ = prepare_masks_ray(scene_root, names, factory, cache, workers=workers, progress=False,
                                 on_view=lambda out: stamps.append(time.perf_counter()))
    wall = time.perf_counter() - t0
    assert stats.done == len(names), stats
    steady = (len(stamps) - 1) / (stamps[-1] - stamps[0]) if len(stamps) > 1 and stamps[-1] > stamps[0] else 0.0
    return {
        "workers": workers,
        "wall_s": round(wall, 2),
        "startup_s": round(stamps[0] - t0, 2),
        "views_per_s_wall": round(len(names) / wall, 3),
        "views_per_s_steady": round(steady, 3),
    }


def ray_round_trip_ms(ray, calls: int = 300) -> float:
    @ray.remote(num_cpus=0)
    class Echo:
        def ping(self, x):
            return x

    a = Echo.remote()
    ray.get(a.ping.remote(0))
    t = time.perf_counter()
    for i in range(calls):
        ray.get(a.ping.remote(i))
    ms = (time.perf_counter() - t) / calls * 1e3
    ray.kill(a)
    return ms


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--scene", type=Path, default=None, help="scene folder (default: generate a tabletop)")
    ap.add_argument("--views", type=int, default=24, help="views of the generated tabletop (or the first N of --scene)")
    ap.add_argument("--width", type=int, default=320)
    ap.add_argument("--height", type=int, default=240)
    ap.add_argument("--models", default="oracle,classical,sam2", help="comma list of oracle, classical, sam2")
    ap.add_argument("--sam2-views", type=int, default=8, help="views for the sam2 set (it is slow on a CPU)")
    ap.add_argument("--points-per-side", type=int, default=8, help="sam2 set: prompt grid per side")
    ap.add_argument("--sam2-image-size", type=int, default=512, help="sam2 set: input resolution")
    ap.add_argument("--workers", default="1,2", help="comma list of Ray worker counts")
    ap.add_argument("--cpus", type=int, default=2, help="CPUs of the local Ray cluster")
    ap.add_argument("--json", type=Path, default=None, help="also write the result JSON here")
    args = ap.parse_args()

    import ray

    from cos3d.distributed import init_local_ray
    from cos3d.readers import load_scene

    work = Path(tempfile.mkdtemp(prefix="bench_ray_"))
    try:
        if args.scene is None:
            from cos3d.tabletop import TabletopConfig, generate_tabletop

            root = work / "scene"
            generate_tabletop(TabletopConfig(out=root, seed=0, views=args.views, width=args.width, height=args.height))
        else:
            root = args.scene
        scene = load_scene(str(root))
        init_local_ray(num_cpus=args.cpus, log_to_driver=False)
        result: dict = {"scene": str(root), "cpus": args.cpus, "ray": ray.__version__,
                        "ray_round_trip_ms": round(ray_round_trip_ms(ray), 3), "sets": {}}
        print(f"Ray empty actor call round trip: {result['ray_round_trip_ms']:.2f} ms", flush=True)
        for kind in [k.strip() for k in args.models.split(",") if k.strip()]:
            n = args.sam2_views if kind == "sam2" else args.views
            names = [f.name for f in scene.frames][:n]
            factory = make_factory(kind, work, args)
            entry = {"views": len(names), "local": bench_local(scene, names, factory, work / f"{kind}-local")}
            print(f"[{kind}] {len(names)} views, local: {entry['local']}", flush=True)
            entry["ray"] = []
            for w in [int(x) for x in args.workers.split(",")]:
                r = bench_ray(Path(scene.root), names, factory, work / f"{kind}-ray{w}", w)
                entry["ray"].append(r)
                print(f"[{kind}] ray {r}", flush=True)
            result["sets"][kind] = entry
        ray.shutdown()
        if args.json:
            args.json.write_text(json.dumps(result, indent=1))
        print(json.dumps(result))
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
