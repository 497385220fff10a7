"""The --ablation training variants (eval/ablation.py): each is configured as its name says, trains on a copy
of the shared tiny run with stage 0 imported, and its outputs are checked (oracle-2D)."""

from __future__ import annotations

import shutil
from dataclasses import replace

import numpy as np
import pytest
import torch

VARIANT_ITERATIONS = 150
"""Stage-1 steps of each variant (the run's own schedule is ~1000: a test only needs the variants to differ
in what they were told to change and to still find objects)."""


@pytest.fixture(scope="module")
def variants(trained_run, tmp_path_factory):
    """``(run copy, {name: (config, trained folder)})`` for balance0, mlp and perturb0.5."""
    from cos3d.eval.ablation import train_variant, variant_configs

    run = tmp_path_factory.mktemp("ablation") / "run"
    shutil.copytree(trained_run, run, ignore=shutil.ignore_patterns("ablation"))
    cfgs = variant_configs(run, perturbs=(0.5,), mlp=True, balance0=True)
    logs: list[str] = []
    out = {}
    for name, cfg in cfgs.items():
        cfg = replace(cfg, iterations=VARIANT_ITERATIONS, ins2lang=replace(cfg.ins2lang, mlp_iterations=300))
        out[name] = (cfg, train_variant(cfg, log=logs.append))
    return run, out, logs


def test_variant_configs_change_one_thing_each(variants):
    from cos3d.pipeline.run_folder import RunFolder

    run, out, _ = variants
    assert set(out) == {"balance0", "mlp", "perturb0.5"}
    base = RunFolder(run).finished_record().train_config()
    for name, (cfg, folder) in out.items():
        assert folder == run / "ablation" / name and cfg.gaussians == RunFolder(run).ply
        assert not cfg.resume and cfg.restart
        changed = {"balance0": ("instance", "balance"), "mlp": ("ins2lang", "method"), "perturb0.5": ("models", "perturb")}
        for sec in ("instance", "ins2lang", "models"):
            a, b = getattr(base, sec), getattr(cfg, sec)
            for f in ("balance", "method", "perturb"):
                if hasattr(a, f) and (sec, f) != changed[name]:
                    assert getattr(a, f) == getattr(b, f), (name, sec, f)
    assert out["balance0"][0].instance.balance == 0.0 and base.instance.balance != 0.0
    assert out["mlp"][0].ins2lang.method == "mlp" and base.ins2lang.method != "mlp"
    assert out["perturb0.5"][0].models.perturb == 0.5 and base.models.perturb == 0.0


def test_variants_train_and_answer(variants, trained_run):
    """Each variant is a finished run over the same imported Gaussians, with fields that differ from the base
    run's where the variant changes them, and it still finds an object by its name in a held-out view."""
    import cos3d
    from cos3d.eval.tabletop import EvalQuery, evaluate

    run, out, logs = variants
    base = cos3d.load(trained_run)
    n = base.gaussians.num
    for name, (cfg, folder) in out.items():
        ts = cos3d.load(folder)
        assert ts.gaussians.num == n, name
        torch.testing.assert_close(ts.gaussians.means, base.gaussians.means)  # stage 0 imported, not retrained
        for lvl, f in ts.fields.items():
            assert f.instance.shape == (n, base.fields[lvl].instance.shape[1]), (name, lvl)
            assert f.language.shape == base.fields[lvl].language.shape, (name, lvl)
            norms = f.language.float().norm(dim=1)
            assert torch.allclose(norms, torch.ones_like(norms), atol=1e-2), (name, lvl)
        lb = base.fields["l"].language.float()
        lv = ts.fields["l"].language.float()
        assert float((lb - lv).abs().max()) > 1e-3, f"{name}: the language field did not change"
        scene = ts.engine.scene
        iid, names = next((i, n_) for i, n_ in sorted(scene.labels.items()) if n_[0] not in ("floor", "table"))
        rep = evaluate(ts.engine, [EvalQuery(names[0], "name", [iid])])
        assert rep.per_query[0].miou is not None and rep.per_query[0].miou > 0.25, (name, names[0], rep.per_query[0].ious)
    # a second call reuses a finished variant instead of retraining it
    from cos3d.eval.ablation import train_variant

    cfg, folder = out["mlp"]
    assert train_variant(cfg, log=logs.append) == folder and any("reusing" in m for m in logs)


def test_balance0_changes_the_instance_field(variants, trained_run):
    import cos3d

    run, out, _ = variants
    a = cos3d.load(out["balance0"][1]).fields["l"].instance.float()
    b = cos3d.load(out["mlp"][1]).fields["l"].instance.float()  # mlp keeps stage 1's settings (same iterations)
    cos = torch.nn.functional.cosine_similarity(a, b, dim=1)
    assert float(np.median(cos.numpy())) < 0.999, "balance 0 trained the same instance field"
