"""Simulated pick success on seeded tabletop scenes (oracle-2D): prompt → cos3d.robot target → pybullet.

For each seed: ``cos3d prepare tabletop`` + ``cos3d train --fast`` (both skipped when the folders exist),
then every rigid object is asked for by its name, the target inside its true box is executed by a
simulated parallel-jaw gripper (cos3d.robot.sim) and counts as a success when the object rises
>= 10 cm and no other object does. Prints per-kind and overall success rates and the failures as
markdown; --json writes every trial.

    .venv/bin/python scripts/bench_pick.py --seeds 0 1 2 --work runs/bench_pick
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from collections import defaultdict
from pathlib import Path


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--work", type=Path, default=Path("runs/bench_pick"), help="scenes and runs go here")
    ap.add_argument("--views", type=int, default=20)
    ap.add_argument("--width", type=int, default=160)
    ap.add_argument("--height", type=int, default=120)
    ap.add_argument("--approach", default="auto", choices=("top", "side", "auto"))
    ap.add_argument("--json", type=Path, default=None, help="write every trial here")
    args = ap.parse_args()

    import cos3d
    from cos3d.robot.sim import evaluate_tabletop

    cli = [sys.executable, "-m", "cos3d"]
    trials = []
    t0 = time.perf_counter()
    for seed in args.seeds:
        scene, run = args.work / f"scene{seed}", args.work / f"run{seed}"
        if not (scene / "meta.json").is_file():
            subprocess.run(cli + ["prepare", "tabletop", "--out", str(scene), "--seed", str(seed), "--views",
                                  str(args.views), "--width", str(args.width), "--height", str(args.height)], check=True)
        if not (run / "fields.pt").is_file():
            subprocess.run(cli + ["train", "--scene", str(scene), "--out", str(run), "--fast"], check=True)
        ts = cos3d.load(run, device="cpu")
        for t in evaluate_tabletop(scene, ts, approach=args.approach):
            t.scene = f"seed {seed}"
            trials.append(t)
            print(f"seed {seed} {t.kind:16s} {t.prompt!r:24} found={t.found} {t.approach} success={t.success} "
                  f"rise={t.rise * 100:.1f} cm {t.flags or ''} {t.note}", flush=True)
    by_kind = defaultdict(list)
    for t in trials:
        by_kind[t.kind].append(t)
    print("\n| object kind | picks | centroid in true box | lifted >= 10 cm |\n|---|---|---|---|")
    for k in sorted(by_kind):
        ts_ = by_kind[k]
        print(f"| {k} | {len(ts_)} | {sum(t.found for t in ts_)}/{len(ts_)} | {sum(t.success for t in ts_)}/{len(ts_)} |")
    n = len(trials)
    print(f"| **all** | {n} | {sum(t.found for t in trials)}/{n} | {sum(t.success for t in trials)}/{n} "
          f"({100 * sum(t.success for t in trials) / max(n, 1):.0f} %) |")
    fails = [t for t in trials if not t.success]
    if fails:
        print("\nFailures:")
        for t in fails:
            print(f"- {t.scene}, {t.kind} ({t.prompt!r}): {t.approach or '-'} grasp, {t.note}")
    print(f"\n{n} picks in {time.perf_counter() - t0:.0f} s")
    if args.json:
        args.json.write_text(json.dumps([t.to_dict() for t in trials], indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
