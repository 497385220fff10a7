"""``cos3d eval lerf|scannet|tabletop``: the field's evaluation protocols (README "What is measured").

Each prints a table and writes ``RESULTS.json`` (per pair and summary) into ``--out`` (default
``RUN/eval/<protocol>/``). The flags are the fields of :mod:`cos3d.eval.config`'s dataclasses.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path
from typing import Any

HELP = "evaluate a trained run: LERF-OVS, ScanNet or tabletop protocols (and the tabletop ablation)"

DESCRIPTIONS = {
    "tabletop": ("our oracle-2D tabletop protocol on held-out views: names, held-out paraphrases, plurals, "
                 "absent things (with the always-present/absent baselines), parts, image prompts; --ablation "
                 "adds the instance-only / language-only / collaborative branches and training variants"),
    "lerf": ("LERF-OVS 3D selection (OpenGaussian/COS3D): per (frame, category) 2D IoU against LangSplat's "
             "released label JSONs; mIoU, mAcc@0.25, mAcc@0.5 per scene and mean, both 2D mask protocols"),
    "scannet": ("ScanNet per-point protocol (OpenGaussian): each GT mesh vertex of *_vh_clean_2.labels.ply takes "
                "the argmax over the 19/15/10 class names; opacity < 0.1 ignored; mIoU and mAcc"),
}


def _configs() -> dict[str, type]:
    from cos3d.eval.config import LerfEvalConfig, ScannetEvalConfig, TabletopEvalConfig

    return {"tabletop": TabletopEvalConfig, "lerf": LerfEvalConfig, "scannet": ScannetEvalConfig}


def register(sub: argparse._SubParsersAction) -> None:
    from cos3d.core.config import add_arguments, add_config_flag

    p = sub.add_parser("eval", help=HELP, description="Evaluate a trained run on a protocol of the field; "
                       "each prints a table and writes RESULTS.json.")
    inner = p.add_subparsers(dest="what", required=True, metavar="PROTOCOL")
    for name, cls in _configs().items():
        q = inner.add_parser(name, help=DESCRIPTIONS[name].split(":")[0], description=DESCRIPTIONS[name])
        add_config_flag(q)
        add_arguments(q, cls, cls())
        q.set_defaults(func=run, config_cls=cls)


def _write(out: Path, results: dict[str, Any]) -> Path:
    from cos3d.core.atomic import ensure_output_folder, write_json

    path = ensure_output_folder(out) / "RESULTS.json"
    write_json(path, results)
    return path


def _threads(n: int | None) -> None:
    import os

    import torch

    n = n or (int(os.environ["COS3D_THREADS"]) if os.environ.get("COS3D_THREADS", "").isdigit() else None)
    if n:
        torch.set_num_threads(n)


def _f(x: Any) -> str:
    return "–" if x is None or (isinstance(x, float) and x != x) else f"{x:.3f}" if isinstance(x, float) else str(x)


def run(args: argparse.Namespace) -> int:
    from cos3d.core.config import config_from_args
    from cos3d.core.errors import Cos3dError

    cls = args.config_cls
    cfg = config_from_args(cls, args, cls())
    if cfg.run is None:
        raise Cos3dError("--run is required: the run folder made by cos3d train")
    if not Path(cfg.run).exists():
        raise Cos3dError(f"--run {cfg.run}: no such folder")
    if getattr(cfg, "prompts", None) == "dev" and tuple(cfg.absent) != tuple(cls().absent):
        raise Cos3dError("--absent has no effect with --prompts dev (the development prompts carry their own "
                         "absent things); drop --absent, or use --prompts eval")
    out = Path(cfg.out) if cfg.out is not None else Path(cfg.run) / "eval" / args.what
    from cos3d.core.atomic import check_writable

    # before evaluating (a budget or ablation runs for minutes to an hour); nothing is created until the
    # results are written, so a run that fails to load leaves no empty folder behind
    check_writable(out, "--out")
    _threads(cfg.threads)
    t0 = time.perf_counter()
    results = {"tabletop": _tabletop, "lerf": _lerf, "scannet": _scannet}[args.what](cfg)
    results["command"] = f"cos3d eval {args.what}"
    results["seconds"] = round(time.perf_counter() - t0, 1)
    print(f"wrote {_write(out, results)} ({results['seconds']} s)")
    return 0


# ------------------------------------------------------------------------------------------------ lerf
def _lerf(cfg: Any) -> dict[str, Any]:
    from rich.console import Console
    from rich.table import Table

    from cos3d.core.errors import Cos3dError
    from cos3d.eval.lerf import evaluate_lerf

    if cfg.labels is None:
        raise Cos3dError("--labels is required: LangSplat's lerf_ovs/label/<scene> folder (or label/)")
    res = evaluate_lerf(Path(cfg.run), Path(cfg.labels), cfg.protocols)
    t = Table(title="LERF-OVS 3D selection")
    t.add_column("scene")
    for proto in cfg.protocols:
        for k in ("mIoU", "mAcc@0.25", "mAcc@0.5"):
            t.add_column(f"{proto} {k}", justify="right")
    for name, s in list(res["scenes"].items()) + [("mean", res["mean"])]:
        t.add_row(name, *[_f(s[p][k]) for p in cfg.protocols for k in ("mIoU", "mAcc@0.25", "mAcc@0.5")])
    Console(width=max(Console().width, 150)).print(t)
    return res


# --------------------------------------------------------------------------------------------- scannet
def _scannet(cfg: Any) -> dict[str, Any]:
    from rich.console import Console
    from rich.table import Table

    from cos3d.core.errors import Cos3dError
    from cos3d.eval.scannet import evaluate_scannet

    if cfg.scene is None:
        raise Cos3dError("--scene is required: a ScanNet scan folder holding <scan>_vh_clean_2.labels.ply")
    res = evaluate_scannet(Path(cfg.run), Path(cfg.scene), cfg.classes)
    t = Table(title=f"ScanNet per-point, {cfg.classes} classes")
    for c in ("scan", "mIoU", "mAcc", "correspondence", "points"):
        t.add_column(c, justify="right")
    for name, s in res["scenes"].items():
        t.add_row(name, _f(s["mIoU"]), _f(s["mAcc"]), s["correspondence"], str(s["points"]))
    t.add_row("mean", _f(res["mean"]["mIoU"]), _f(res["mean"]["mAcc"]), "", "")
    Console().print(t)
    return res


# -------------------------------------------------------------------------------------------- tabletop
def _tabletop(cfg: Any) -> dict[str, Any]:
    from rich.console import Console

    import cos3d
    from cos3d.eval.tabletop import evaluate, evaluate_image_prompts, tabletop_queries

    console = Console(width=max(Console().width, 150))
    ts = cos3d.load(cfg.run)
    engine = ts.engine
    if cfg.prompts == "dev":
        from cos3d.eval.devprompts import dev_tabletop_queries

        qs = dev_tabletop_queries(engine.scene)
    else:
        qs = tabletop_queries(engine.scene, absent=cfg.absent)
    models = ts.record.get("config", {}).get("models", {}) if hasattr(ts, "record") else {}
    from cos3d.vision.registry import protocol_label

    label = protocol_label(models.get("masks"), models.get("embedder"))
    oracle = label.startswith("oracle-2D")
    rep = evaluate(engine, qs, protocol=cfg.protocol)
    results: dict[str, Any] = {
        "run": str(cfg.run),
        "oracle_2d": oracle,
        "protocol_label": label,
        "prompts": cfg.prompts,
        "models": models,
        "main": rep.to_dict(),
    }
    _print_main(console, rep, label, cfg.prompts)
    if cfg.image_prompts:
        results["image_prompts"] = evaluate_image_prompts(engine, protocol=cfg.protocol)
        _print_images(console, results["image_prompts"])
    if cfg.ablation:
        results["ablation"] = _ablation(cfg, ts, qs, console)
    if cfg.budget:
        results["budget"] = _budget(ts, qs, console)
    return results


def _budget(ts: Any, qs: list, console: Any) -> dict[str, Any]:
    from rich.table import Table

    from cos3d.eval.budget import error_budget

    res = error_budget(ts, qs)
    t = Table(title="error budget (present queries, held-out views; rows after 'instance field' force presence "
                    "until the last)")
    for c in ("row", "pairs", "mIoU", "mAcc@0.25", "names", "paraphrases", "plurals", "parts", "part paraphrases"):
        t.add_column(c, justify="right")
    for name, r in res["rows"].items():
        k = r["by_kind"]
        t.add_row(name, str(r["pairs"]), _f(r["mIoU"]), _f(r["mAcc@0.25"]), *[_f(k.get(x)) for x in
                  ("name", "paraphrase", "plural", "part", "part_paraphrase")])
    console.print(t)
    for p in res["prompts"]:
        if p["ceiling"] is not None and p["mIoU"] < p["ceiling"] - 0.1:
            console.print(f"  {p['query']!r} ({p['kind']}): {p['mIoU']:.2f} vs ceiling {p['ceiling']:.2f}: {p['why']}")
    for r in res.get("instances", []):
        console.print(f"  same-kind {r['query']!r}: {r['instances']} instances, refinement found {r['found_refined']}, "
                      f"answer keeps {r['found_final']} as {r['separate']} separate object(s) of {r['objects']}"
                      + (f"; dropped by the post-filters: {r['dropped_by_post_filters']}" if r["dropped_by_post_filters"] else ""))
    fr = res.get("presence_frontier")
    if fr:
        for part, r in (("whole objects", fr["objects"]), ("parts", fr["parts"])):
            a = r["at_no_target"]
            if a is not None:
                console.print(f"  presence frontier ({part}; perfect field, threshold in hindsight): at no-target "
                              f"{a['no_target']:.3f}, false-empty {a['false_empty']:.3f} ({a['false_empty_n']} of {r['present']})")
        console.print(f"  lowest present: {fr['lowest_present']}; highest absent: {fr['highest_absent']}")
    return res


def _print_main(console: Any, rep: Any, label: str, prompts: str = "eval") -> None:
    from rich.table import Table

    which = "development prompts (where settings are chosen)" if prompts == "dev" else "evaluation prompts"
    t = Table(title=f"tabletop protocol ({label}), {which}, {rep.protocol} "
                    f"masks, {len(rep.views)} held-out views")
    for c in ("kind", "held out", "queries", "pairs", "mIoU", "mAcc@0.25", "mAcc@0.5", "decision acc."):
        t.add_column(c, justify="right")
    for kind, r in rep.by_kind.items():
        t.add_row(kind, "yes" if r["held_out"] else "no", str(r["queries"]), str(r["pairs"]), _f(r["mIoU"]),
                  _f(r["mAcc@0.25"]), _f(r["mAcc@0.5"]), _f(r["decision_accuracy"]))
    s, h = rep.summary, rep.held_out
    t.add_row("all but near-training", "", "", str(s["pairs"]), _f(s["mIoU"]), _f(s["mAcc@0.25"]), _f(s["mAcc@0.5"]), "")
    t.add_row("held-out kinds", "yes", "", str(h["pairs"]), _f(h["mIoU"]), _f(h["mAcc@0.25"]), _f(h["mAcc@0.5"]), "")
    console.print(t)
    if rep.near:
        n = rep.near
        console.print(f"near-training phrasings (the held-out set before issue 23, its own row): mIoU {_f(n['mIoU'])}, "
                      f"mAcc@0.25 {_f(n['mAcc@0.25'])} over {n['pairs']} pairs, {n['false_empty']} of {n['queries']} "
                      "answered not here")
    p = rep.presence
    console.print(f"presence (held-out kinds): accuracy {_f(p['accuracy'])} on {p['queries']} queries ({p['present']} present, "
                  f"{p['absent']} absent); always-present baseline {_f(p['always_present_baseline'])}, "
                  f"always-absent {_f(p['always_absent_baseline'])}; balanced accuracy {_f(p['balanced_accuracy'])}; "
                  f"false-empty rate {_f(p['false_empty_rate'])}, false-present rate {_f(p['false_present_rate'])}")


def _print_images(console: Any, res: dict[str, Any]) -> None:
    for path in ("lift", "lookup"):
        if path in res:
            r = res[path]
            console.print(f"image prompts ({path}): {r['prompts']} box prompts on held-out views, {r['pairs']} pairs in "
                          f"the other held-out views: mIoU {_f(r['mIoU'])}, mAcc@0.25 {_f(r['mAcc@0.25'])}")
    console.print(f"[dim]{res['note']}[/dim]")


def _ablation(cfg: Any, ts: Any, qs: list, console: Any) -> dict[str, Any]:
    from rich.table import Table

    import cos3d
    from cos3d.eval.ablation import BRANCHES, COS3D_LERF_ABLATION, BranchAnswers, train_variant, variant_configs
    from cos3d.eval.tabletop import evaluate

    rows: dict[str, Any] = {}
    b = BranchAnswers(ts)
    for branch in BRANCHES:
        rows[branch] = evaluate(ts.engine, qs, protocol=cfg.protocol, answer=b.fn(branch))
    variants = variant_configs(Path(cfg.run), perturbs=[s for s in cfg.perturb if s > 0],
                               mlp=cfg.mlp, balance0=cfg.balance0)
    for name, vcfg in variants.items():
        folder = train_variant(vcfg, log=lambda m: console.print(f"[dim]{m}[/dim]"))
        rows[f"collaborative, {name}"] = evaluate(cos3d.load(folder).engine, qs, protocol=cfg.protocol)
    t = Table(title=f"ablation (tabletop, {cfg.protocol} masks)")
    for c in ("variant", "mIoU", "mAcc@0.25", "held-out mIoU", "names mIoU", "no-target acc.", "false-empty"):
        t.add_column(c, justify="right")
    for name, rep in rows.items():
        t.add_row(name, _f(rep.summary["mIoU"]), _f(rep.summary["mAcc@0.25"]), _f(rep.held_out["mIoU"]),
                  _f(rep.by_kind.get("name", {}).get("mIoU")), _f(rep.presence["accuracy"]),
                  _f(rep.presence["false_empty_rate"]))
    console.print(t)
    branches = sorted(("instance", "language", "collaborative_raw", "collaborative"),
                      key=lambda k: -rows[k].summary["mIoU"])
    best = branches[0]
    verdict = " > ".join(f"{k} {rows[k].summary['mIoU']:.3f}" for k in branches)
    single = max(rows["instance"].summary["mIoU"], rows["language"].summary["mIoU"])
    if rows["collaborative_raw"].summary["mIoU"] <= single:
        verdict += ("; COS3D's collaborative query without cos3d's post-filters is not above the best single branch "
                    "here")
    if rows["collaborative"].summary["mIoU"] <= single:
        verdict += "; the collaborative query with the post-filters is not above the best single branch here"
    console.print(f"COS3D's own ablation on LERF-OVS (mIoU): instance {COS3D_LERF_ABLATION['instance']}, language "
                  f"{COS3D_LERF_ABLATION['language']}, collaborative {COS3D_LERF_ABLATION['collaborative']}; here: {verdict}")
    return {"rows": {k: {"summary": v.summary, "held_out": v.held_out, "presence": v.presence, "by_kind": v.by_kind}
                     for k, v in rows.items()},
            "best_branch": best, "verdict": verdict, "cos3d_lerf_ablation": COS3D_LERF_ABLATION}
