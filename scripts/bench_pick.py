"""Simulated picks grounded like a user (oracle-2D): held-out phrasing → cos3d.robot's first target → pybullet.

For each seed: ``cos3d prepare tabletop`` + ``cos3d train --fast`` (both skipped when the folders exist).
Then every rigid object is asked for by its held-out evaluation phrasings (its catalogue entry's
``eval_names``, read at run time; never a training name: checked), and ``pick_targets(run, phrase)``
alone decides what to grasp: its first target (top grasp of the top-ranked object) is executed by a
simulated parallel-jaw gripper (cos3d.robot.sim) and, unless --no-arm, by a Panda arm standing at --arm-base
(cos3d.robot.arm: IK with joint limits, its links checked against the scene). Ground truth only scores it:

- grounding: the target's centroid lies in an intended object's true box (or the lift raised one);
  an empty answer is a grounding failure;
- grasp | grounded: of the grounded picks, the intended object rose >= 10 cm and no other did;
- end to end: the intended object rose >= 10 cm and no other did (over all prompts);
- arm columns (the arm-based measure): reachable (of the executed targets, IK found joint-limited
  pre-grasp, grasp and lift poses), grasp | grounded and end to end with the arm (the intended object
  rose > 5 cm, still between the fingers, no other object did; a collision or an unreachable pose is a
  failure, reported as such in the trial's ``arm`` field).

A phrasing that names several objects (a kind: "cup" for two mugs) is asked once and is grounded on
any of them. A second row asks with each object's canonical training name ("training names (not held
out)") so the drop is visible (--no-training-row to skip). Prints each trial, markdown tables, and as
its last line the summary JSON (also written, with every trial, to --json).

    .venv/bin/python scripts/bench_pick.py --seeds 0 1 2 3 4 --work runs/bench_pick --json picks.json
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

ARM_BASE = (-0.7, 0.0, 0.625, 0.0)
"""The Panda's base on a tabletop (x, y, z metres, yaw degrees): the table (1.5 × 1.0 m, top at 0.625 m)'s
-x edge, facing the objects; the far ones are out of its reach (a column, not an error)."""
ROWS = {"evaluation": "evaluation phrasings (held out)", "training": "training names (not held out)"}


def _rate(k: int, n: int) -> str:
    return f"{k}/{n} ({100 * k / n:.0f} %)" if n else "–"


def table(summary: dict) -> str:
    """Markdown: one row per kind and an overall row, grounding / grasp|grounded / end to end (free-floating
    gripper), then the arm-based columns when the arm ran: reachable / grasp|grounded / end to end."""
    arm = "arm" in summary["overall"]
    head = "| object kind | prompts | grounding | grasp given grounded | end to end |"
    rule = "|---|---:|---:|---:|---:|"
    if arm:
        head += " arm: reachable | arm: grasp given grounded | arm: end to end |"
        rule += "---:|---:|---:|"
    lines = [head, rule]

    def row(name: str, b: dict) -> str:
        r = (f"| {name} | {b['trials']} | {_rate(b['grounded'], b['trials'])} | "
             f"{_rate(b['grasped_given_grounded'], b['grounded'])} | {_rate(b['end_to_end'], b['trials'])} |")
        if arm:
            a = b.get("arm") or {"reachable": 0, "executed": 0, "grasped_given_grounded": 0, "grounded_executed": 0,
                                 "end_to_end": 0}
            r += (f" {_rate(a['reachable'], a['executed'])} |"
                  f" {_rate(a['grasped_given_grounded'], a['grounded_executed'])} |"
                  f" {_rate(a['end_to_end'], b['trials'])} |")
        return r

    for k, b in summary["per_kind"].items():
        lines.append(row(k, b))
    lines.append(row("**all**", summary["overall"]))
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2, 3, 4])
    ap.add_argument("--work", type=Path, default=Path("runs/bench_pick"), help="scenes and runs go here")
    ap.add_argument("--views", type=int, default=20)
    ap.add_argument("--width", type=int, default=160)
    ap.add_argument("--height", type=int, default=120)
    ap.add_argument("--approach", default="auto", choices=("top", "side", "auto"))
    ap.add_argument("--no-training-row", action="store_true", help="skip the training-names row")
    ap.add_argument("--ids", type=int, nargs="+", default=None,
                    help="only prompts naming these instance ids (a quick check; the benchmark asks every object)")
    ap.add_argument("--json", type=Path, default=None, help="write the summary and every trial here")
    ap.add_argument("--arm-base", type=float, nargs=4, default=list(ARM_BASE), metavar=("X", "Y", "Z", "YAW_DEG"),
                    help="where the Panda's base stands in the scene (metres, degrees about z); default: the "
                         "middle of the table's -x edge, on its top, facing +x")
    ap.add_argument("--no-arm", action="store_true", help="skip the arm-based columns (cos3d.robot.arm)")
    args = ap.parse_args(argv)

    import cos3d
    from cos3d.core.phrases import normalize
    from cos3d.robot.bench import evaluate_tabletop, scene_training_names, summarize_trials

    import numpy as np

    T_arm = None
    if not args.no_arm:
        x, y, z, yaw = args.arm_base
        c, s_ = np.cos(np.radians(yaw)), np.sin(np.radians(yaw))
        T_arm = np.array([[c, -s_, 0, x], [s_, c, 0, y], [0, 0, 1, z], [0, 0, 0, 1]], np.float64)
    cli = [sys.executable, "-m", "cos3d"]
    sets = ["evaluation"] + ([] if args.no_training_row else ["training"])
    trials = {s: [] for s in sets}
    leaked: list[str] = []  # evaluation prompts that are training names of their scene (must stay empty)
    t0 = time.perf_counter()
    for seed in args.seeds:
        scene, run = args.work / f"scene{seed}", args.work / f"run{seed}"
        if not (scene / "meta.json").is_file():
            subprocess.run(cli + ["prepare", "tabletop", "--out", str(scene), "--seed", str(seed), "--views",
                                  str(args.views), "--width", str(args.width), "--height", str(args.height)], check=True)
        if not (run / "fields.pt").is_file():
            subprocess.run(cli + ["train", "--scene", str(scene), "--out", str(run), "--fast"], check=True)
        ts = cos3d.load(run, device="cpu")
        names = {normalize(n) for n in scene_training_names(scene)}
        for s in sets:
            for t in evaluate_tabletop(scene, ts, prompt_set=s, approach=args.approach, ids=args.ids,
                                       T_world_arm=T_arm):
                t.scene = f"seed {seed}"
                if s == "evaluation" and normalize(t.prompt) in names:
                    leaked.append(f"seed {seed}: {t.prompt!r}")
                trials[s].append(t)
                print(f"seed {seed} [{s}] {t.kind:28s} {t.prompt!r:30} grounded={t.grounded} e2e={t.end_to_end} "
                      f"{t.approach or '-'} in_box={t.in_box} {t.flags or ''} {t.note}"
                      + (f" | arm: {t.arm['status']} {t.arm['reason']}" if t.arm else ""), flush=True)
    wall = time.perf_counter() - t0
    out = {
        "benchmark": "pick grounded like a user",
        "protocol": "oracle-2D (dataset masks + labels embedder at training); prompts: held-out evaluation "
                    "phrasings; the robot API's first target executed; ground truth only scores",
        "oracle_2d": True,
        "seeds": args.seeds,
        "views": args.views, "size": [args.width, args.height], "approach": args.approach,
        "arm": None if args.no_arm else {
            "robot": "pybullet_data franka_panda/panda.urdf", "base_xyz_yaw_deg": args.arm_base,
            "lift_success_m": 0.05, "measure": "arm-based (IK, joint limits, link collisions)"},
        "rows": {ROWS[s]: summarize_trials(trials[s]) for s in sets},
        "evaluation_prompts_that_are_training_names": leaked,
        "wall_s": round(wall, 1),
        "machine": f"{platform.node()} {platform.machine()}, {os.cpu_count()} CPUs, load {os.getloadavg()[0]:.1f}",
    }
    for s in sets:
        print(f"\n### {ROWS[s]}, seeds {' '.join(map(str, args.seeds))} (oracle-2D)\n")
        print(table(out["rows"][ROWS[s]]))
        fails = [t for t in trials[s] if not t.end_to_end]
        if fails:
            print("\nFailures:")
            for t in fails:
                print(f"- {t.scene}, {t.kind} ({t.prompt!r}): {'grounded' if t.grounded else 'not grounded'}, {t.note}")
        arm_fails = [t for t in trials[s] if t.arm is not None and not t.arm_end_to_end]
        if arm_fails:
            print("\nArm failures:")
            for t in arm_fails:
                print(f"- {t.scene}, {t.kind} ({t.prompt!r}): {'grounded' if t.grounded else 'not grounded'}, "
                      f"arm {t.arm['status']}: {t.arm['reason']}")
    print(f"\n{sum(len(v) for v in trials.values())} picks in {wall:.0f} s")
    if args.json:
        full = dict(out, trials={ROWS[s]: [t.to_dict() for t in trials[s]] for s in sets})
        args.json.write_text(json.dumps(full, indent=1))
    print(json.dumps(out))
    return 0


if __name__ == "__main__":
    sys.exit(main())
