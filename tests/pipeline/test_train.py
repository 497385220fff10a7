"""``cos3d train`` end to end on the session tabletop, ``cos3d.load``, resume, and CLI errors.

Quality bars were measured on the session tabletop (tests/conftest.py TEST_TABLETOP, --fast); see the
constants below.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

import cos3d
from cos3d.cli import entrypoint
from cos3d.core.errors import Cos3dError

# Bars (measured values in the comments; see the report of the stage-1/2 issue).
MIN_ARI = 0.75
"""Held-out views: pixels assigned to their nearest level-l anchor's instance, ARI against GT instances
(measured 0.85-0.92 on the 4 held-out views of the seed-0 test tabletop, 0.80-0.88 on seed 3)."""
MIN_MARGIN = 0.3
"""Held-out views: min 1 − cos between object centroids minus the median 1 − cos of pixels to their
object's centroid (measured 0.52-0.63 on seed 0, 0.41-0.57 on seed 3; within-object 0.035-0.06)."""
MIN_LANG_COS = 0.9
"""Per object, median cosine of its Gaussians' language features to its label embedding (measured
0.954 (table) to 1.0 over the 10 objects of seed 0; 0.967-1.0 over 8 objects of seed 3)."""


pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def ts(trained_run):
    return cos3d.load(trained_run, device="cpu")


def _dominant_gaussians(ts, frame, min_weight=0.3):
    """Per pixel, the Gaussian with the largest blending weight (−1 if none above ``min_weight``)."""
    from cos3d.render import compute_contributions

    c = compute_contributions(ts.gaussians.detach(), frame.camera)
    hw = c.height * c.width
    best = torch.full((hw,), -1, dtype=torch.long)
    # triples are sorted by pixel then weight descending: the first of each pixel is the largest
    first = torch.ones_like(c.pixel, dtype=torch.bool)
    first[1:] = c.pixel[1:] != c.pixel[:-1]
    keep = first & (c.weight > min_weight)
    best[c.pixel[keep]] = c.gaussian[keep]
    return c, best


def _render_unit(ts, c, feats):
    from cos3d.field.contrastive import normalize

    F = c.render(feats.float())
    alpha = c.alpha()
    return normalize(F), alpha


# ---------------------------------------------------------------------------------------------------
# run folder and load


def test_run_folder_and_record(trained_run):
    run = Path(trained_run)
    for name in ("run.json", "gaussians.ply", "fields.pt", "query_state.pt"):
        assert (run / name).exists(), name
    assert not (run / "checkpoints" / "instance.pt").exists()
    rec = json.loads((run / "run.json").read_text())
    # the masks live in the scene's shared 2D cache, named by the models
    cache = Path(rec["stages"]["masks"]["cache"])
    assert (cache / "manifest.json").is_file() and cache.parent.name == "cos3d_masks"
    assert cache.parent.parent == Path(rec["scene"]) and cache.name.startswith("dataset-labels-")
    assert rec["config"]["models"]["masks"] == "dataset" and rec["config"]["models"]["embedder"] == "labels"
    assert rec["config_files"] == ["fast"] and rec["config"]["recon"]["iterations"] == 300
    assert rec["config"]["iterations_per_view"] == 50
    assert "torch" in rec["versions"] and "cos3d" in rec["versions"]
    for st in ("recon", "masks", "instance", "language"):
        assert rec["stages"][st]["done"] and rec["stages"][st]["time_s"] >= 0
    c = rec["counts"]
    assert c["n_gaussians"] > 1000 and c["n_views"] >= 10
    assert set(c["n_masks"]) == {"l", "s"} and c["n_masks"]["l"] > 0
    assert set(c["n_anchors"]) == {"l", "s"} and all(0 < v < 1 for v in c["dbar"].values())
    assert "psnr_test" in rec["metrics"]


def test_load_trained_scene(ts, trained_run):
    assert ts.run_dir == Path(trained_run)
    assert set(ts.fields) == {"l", "s"}
    N = ts.gaussians.num
    for lev, f in ts.fields.items():
        assert f.instance.shape == (N, 16) and f.instance.dtype == torch.float32
        torch.testing.assert_close(f.instance.norm(dim=1), torch.ones(N), atol=1e-4, rtol=0)
        assert f.language.dtype == torch.float16 and f.language.shape == (N, 384)
        assert (f.language.float().norm(dim=1) - 1).abs().max() < 5e-3
        assert f.anchors.shape[1] == 16 and f.targets.shape == (f.anchors.shape[0], 384)
        assert 0 < f.dbar < 1
        assert torch.equal(ts.gaussians.features[f"instance_{lev}"], f.instance)
        assert torch.equal(ts.gaussians.features[f"language_{lev}"], f.language)
    assert ts.config.levels == ("l", "s") and ts.config.models.embedder == "labels"
    assert len(ts.scene.frames) > 0
    assert ts.embedder.dim == 384
    assert ts.device == torch.device("cpu")


def test_load_errors(tmp_path, trained_run):
    with pytest.raises(Cos3dError, match="nope"):
        cos3d.load(tmp_path / "nope")
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(Cos3dError, match="empty.*run.json"):
        cos3d.load(empty)
    bad = tmp_path / "bad"
    shutil.copytree(trained_run, bad, ignore=shutil.ignore_patterns("masks"))
    (bad / "fields.pt").write_bytes(b"garbage")
    with pytest.raises(Cos3dError, match="fields.pt.*--resume"):
        cos3d.load(bad)


def test_query_is_delegated_to_the_engine(ts, monkeypatch):

    calls = []

    class FakeEngine:
        def __init__(self, trained, **kwargs):  # kwargs: the image-prompt segmenter seam
            calls.append(("init", trained))

        def query(self, *a, **k):
            calls.append(("query", a, k))
            return "answer"

        def load_state_dict(self, state):
            return False  # the saved index/calibration belong to the real engine

    import cos3d.pipeline.trained as trained_mod

    monkeypatch.setattr(trained_mod, "QueryEngine", FakeEngine)
    monkeypatch.setattr(ts, "_engine", None)
    assert ts.query("mug", within="table") == "answer"
    assert ts.query(text="cup") == "answer"
    assert [c[0] for c in calls] == ["init", "query", "query"] and calls[0][1] is ts
    # TrainedScene.query does not re-type the engine's signature: what the caller gave is what the engine gets
    assert calls[1][1] == ("mug",) and calls[1][2] == {"within": "table"}
    assert calls[2][1] == ("cup",) and calls[2][2] == {}


# ---------------------------------------------------------------------------------------------------
# quality on the tabletop


def _object_stats(ts, frame, lev="l"):
    """(ARI of nearest-anchor assignment, margin, per-object stats) on one view."""
    from sklearn.metrics import adjusted_rand_score

    from cos3d.vision import load_view

    c, _ = _dominant_gaussians(ts, frame)
    f = ts.fields[lev]
    o, alpha = _render_unit(ts, c, f.instance)
    gt = torch.from_numpy(frame.load_instance()).reshape(-1)
    ok = (alpha > 0.9) & (gt > 0)
    ids = [int(i) for i in torch.unique(gt[ok]) if int(((gt == i) & ok).sum()) >= 30]
    ok &= torch.isin(gt, torch.tensor(ids))
    # nearest anchor → the dataset instance its training mask came from
    rec = ts.fields_meta
    src = []
    anchor_view = ts_anchor_views(ts, lev)
    for view_name, mask_idx in anchor_view:
        ms, _ = load_view(ts.record["stages"]["masks"]["cache"], view_name)
        src.append(int(ms.source_id[mask_idx]))
    src = torch.tensor(src)
    nearest = (o[ok] @ f.anchors.T).argmax(1)
    ari = adjusted_rand_score(gt[ok].numpy(), src[nearest].numpy())
    cents = torch.nn.functional.normalize(torch.stack([o[ok & (gt == i)].mean(0) for i in ids]), dim=1)
    intra = torch.cat([1 - o[ok & (gt == i)] @ cents[k] for k, i in enumerate(ids)]).median()
    cc = cents @ cents.T
    inter = (1 - cc[~torch.eye(len(ids), dtype=torch.bool)]).min()
    del rec
    return ari, float(inter - intra), float(intra), float(inter)


def ts_anchor_views(ts, lev):
    data = torch.load(ts.run_dir / "fields.pt", map_location="cpu", weights_only=True)["levels"][lev]
    return list(zip(data["anchor_view"], [int(m) for m in data["anchor_mask"]], strict=True))


def test_instance_field_separates_objects_in_held_out_views(ts):
    test_frames = ts.scene.split("test")[:2]
    assert test_frames
    res = [_object_stats(ts, fr) for fr in test_frames]
    print("held-out (ARI, margin, intra, inter):", [tuple(round(x, 3) for x in r) for r in res])
    for ari, margin, _intra, _inter in res:
        assert ari > MIN_ARI
        assert margin > MIN_MARGIN


def test_language_field_returns_each_objects_embedding(ts):
    """Gaussians that dominate an object's pixels carry (≈) that object's label embedding."""
    frames = ts.scene.split("train")[::2]
    members: dict[int, set] = {}
    for frame in frames:
        _, best = _dominant_gaussians(ts, frame)
        inst = torch.from_numpy(frame.load_instance()).reshape(-1)
        for i in torch.unique(inst).tolist():
            members.setdefault(i, set()).update(best[(inst == i) & (best >= 0)].tolist())
    L = ts.fields["l"].language.float()
    cos_by_obj = {}
    for i, sel in members.items():
        names = ts.scene.labels.get(i)
        if not names or len(sel) < 5:
            continue
        target = torch.nn.functional.normalize(ts.embedder.embed_text(names).mean(0), dim=0)
        cos_by_obj[f"{i}:{names[0]}"] = float((L[torch.tensor(sorted(sel))] @ target).median())
    print("median cosine per object:", {k: round(v, 3) for k, v in cos_by_obj.items()})
    assert len(cos_by_obj) >= 7
    assert min(cos_by_obj.values()) >= MIN_LANG_COS


# ---------------------------------------------------------------------------------------------------
# resume


class _Killed(Exception):
    pass


def _small_run(trained_run, tabletop_dir, tmp_path, n_train=3):
    """A copy of the tabletop that trains on ``n_train`` views, with the session run's Gaussians and
    (cached) masks imported: stage-1 tests then build only a few views' weights."""
    from cos3d.pipeline.runner import train
    from cos3d.pipeline.train_config import TrainConfig

    scene = tmp_path / "scene"
    shutil.copytree(tabletop_dir, scene)
    splits = json.loads((scene / "splits.json").read_text())
    splits["train"] = splits["train"][:n_train]
    (scene / "splits.json").write_text(json.dumps(splits))
    run = tmp_path / "run"  # the scene copy brings the session run's 2D cache along: masks are cache hits
    train(
        TrainConfig(
            scene=str(scene),
            out=run,
            stage="masks",
            gaussians=Path(trained_run) / "gaussians.ply",
            progress=False,
            threads=1,
        )
    )
    return scene, run


def test_resume_after_killed_stage1_matches_uninterrupted(trained_run, tabletop_dir, tmp_path):
    from cos3d.pipeline.run_folder import RunFolder
    from cos3d.pipeline.runner import train
    from cos3d.pipeline.train_config import TrainConfig

    scene, run = _small_run(trained_run, tabletop_dir, tmp_path)
    base = dict(
        scene=str(scene), out=run, stage="instance", iterations=30, cache_weights=True, progress=False, threads=1
    )

    def cfg(**kw):
        c = TrainConfig(**{**base, **kw})
        c.instance.checkpoint_every = 10
        return c

    train(cfg())
    ref = RunFolder(run).read_fields().levels

    def kill(stage, it):
        if stage == "instance" and it == 24:
            raise _Killed

    with pytest.raises(Cos3dError, match="--resume.*--restart"):  # finished work is never re-run silently
        train(cfg())
    with pytest.raises(_Killed):
        train(cfg(restart=True), on_step=kill)
    assert (run / "checkpoints" / "instance.pt").exists()
    rec = json.loads((run / "run.json").read_text())
    # the killed re-run left the finished stage's output in place (still loadable), marked as re-running
    assert rec["stages"]["instance"]["done"] and rec["stages"]["instance"]["running"]
    assert torch.equal(RunFolder(run).read_fields().levels["l"].instance, ref["l"].instance)
    train(cfg(resume=True))
    rec = json.loads((run / "run.json").read_text())
    assert rec["stages"]["instance"]["resumed_from"] == 20
    assert not (run / "checkpoints" / "instance.pt").exists()
    out = RunFolder(run).read_fields().levels
    for lev in ("l", "s"):
        assert torch.equal(out[lev].instance, ref[lev].instance)
    # --resume now skips the finished stage (the record is unchanged)
    train(cfg(resume=True, iterations=50))
    assert json.loads((run / "run.json").read_text())["stages"]["instance"] == rec["stages"]["instance"]


def test_stage2_mlp_option_and_resume_skips(trained_run, tabletop_dir, tmp_path):
    from cos3d.field.ins2lang import Ins2LangConfig
    from cos3d.pipeline.run_folder import RunFolder
    from cos3d.pipeline.runner import train
    from cos3d.pipeline.train_config import TrainConfig

    scene, run = _small_run(trained_run, tabletop_dir, tmp_path)
    train(TrainConfig(scene=str(scene), out=run, stage="instance", iterations=20, progress=False, threads=1))
    cfg = TrainConfig(
        scene=str(scene),
        out=run,
        stage="language",
        progress=False,
        threads=1,
        ins2lang=Ins2LangConfig(method="mlp", mlp_iterations=30, mlp_batch=512),
    )
    train(cfg)
    data = RunFolder(run).read_fields()
    assert data.ins2lang["method"] == "mlp"
    for lev in ("l", "s"):
        L = data.levels[lev].language
        assert L is not None
        assert L.dtype == torch.float16 and torch.isfinite(L.float()).all()
        assert (L.float().norm(dim=1) - 1).abs().max() < 5e-3
    rec = json.loads((run / "run.json").read_text())
    assert all(rec["stages"][s]["done"] for s in ("recon", "masks", "instance", "language"))
    ts = cos3d.load(run, device="cpu")
    assert ts.fields["l"].language.shape[0] == ts.gaussians.num


# ---------------------------------------------------------------------------------------------------
# CLI errors


def _cli(capsys, *argv):
    rc = entrypoint(["train", "--no-progress", *map(str, argv)])
    err = capsys.readouterr().err.strip()
    return rc, err


def test_cli_unknown_scene(capsys, tmp_path):
    rc, err = _cli(capsys, "--scene", tmp_path / "no_such_scene", "--out", tmp_path / "run")
    assert rc == 2 and "no_such_scene" in err and len(err.splitlines()) == 1


def test_cli_out_of_another_scene(capsys, trained_run, tmp_path):
    other = tmp_path / "other_scene"
    shutil.copytree(json.loads((Path(trained_run) / "run.json").read_text())["scene"], other)
    rc, err = _cli(capsys, "--scene", other, "--out", trained_run, "--stage", "masks")
    assert rc == 2 and "--out" in err and "other_scene" in err and len(err.splitlines()) == 1


def test_cli_stage_needs_previous(capsys, tabletop_dir, tmp_path):
    rc, err = _cli(capsys, "--scene", tabletop_dir, "--out", tmp_path / "fresh", "--stage", "language")
    assert rc == 2 and "--stage" in err and "recon" in err


def test_cli_corrupt_fields_and_checkpoint(capsys, trained_run, tabletop_dir, tmp_path):
    run = tmp_path / "run"
    shutil.copytree(trained_run, run)
    (run / "fields.pt").write_bytes(b"\x00garbage")
    rc, err = _cli(capsys, "--scene", tabletop_dir, "--out", run, "--resume")
    assert rc == 2 and "fields.pt" in err and "--resume" in err and "delete" in err
    (run / "fields.pt").unlink()
    (run / "checkpoints").mkdir(exist_ok=True)
    (run / "checkpoints" / "instance.pt").write_bytes(b"\x00garbage")
    rc, err = _cli(capsys, "--scene", tabletop_dir, "--out", run, "--resume", "--stage", "instance")
    assert rc == 2 and "instance.pt" in err and "--resume" in err


def test_cli_no_masks_in_any_view(capsys, trained_run, tabletop_dir, tmp_path):
    from PIL import Image

    scene = tmp_path / "blank"
    shutil.copytree(tabletop_dir, scene)
    for p in (scene / "instance").glob("*.png"):
        arr = np.asarray(Image.open(p))
        Image.fromarray(np.zeros_like(arr)).save(p)
    for p in (scene / "part").glob("*.png"):
        arr = np.asarray(Image.open(p))
        Image.fromarray(np.zeros_like(arr)).save(p)
    rc, err = _cli(
        capsys, "--scene", scene, "--out", tmp_path / "run", "--gaussians", Path(trained_run) / "gaussians.ply"
    )
    assert rc == 2 and "'dataset' mask provider" in err and "--masks" in err


def test_config_validation():
    from cos3d.pipeline.train_config import TrainConfig

    from cos3d.vision.models import ModelsConfig

    with pytest.raises(Cos3dError, match="embedder: labels"):
        TrainConfig(scene="x", models=ModelsConfig(masks="sam2", embedder="labels")).validate()
    with pytest.raises(Cos3dError, match="levels: lists a level twice"):
        TrainConfig(scene="x", levels=("l", "l")).validate()
    with pytest.raises(SystemExit):
        entrypoint(["train", "--scene", "x", "--levels", "l,x"])
    with pytest.raises(SystemExit):
        entrypoint(["train", "--scene", "x", "--stage", "everything"])


def test_cli_failed_import_leaves_folder_usable_and_finished_work_is_never_rerun_silently(
    capsys, trained_run, tabletop_dir, tmp_path
):
    bad = tmp_path / "bad.ply"
    bad.write_text("not a ply\n")
    run = tmp_path / "run"
    rc, err = _cli(capsys, "--scene", tabletop_dir, "--out", run, "--gaussians", bad, "--stage", "recon")
    assert rc == 2 and "bad.ply" in err and len(err.splitlines()) == 1
    good = Path(trained_run) / "gaussians.ply"
    # the failed import left a run.json but no finished stage: the same folder takes the next try
    rc, err = _cli(capsys, "--scene", tabletop_dir, "--out", run, "--gaussians", good, "--stage", "recon")
    assert rc == 0, err
    rec = json.loads((run / "run.json").read_text())
    assert rec["stages"]["recon"]["done"] and rec["stages"]["recon"]["source"] == "import"
    # running it again would replace finished work: refused, nothing changed
    before = (run / "run.json").read_text()
    rc, err = _cli(capsys, "--scene", tabletop_dir, "--out", run, "--gaussians", good, "--stage", "recon")
    assert rc == 2 and "--resume" in err and "--restart" in err and len(err.splitlines()) == 1
    assert (run / "run.json").read_text() == before
    rc, err = _cli(capsys, "--scene", tabletop_dir, "--out", run, "--gaussians", good, "--stage", "recon", "--restart")
    assert rc == 0, err


def test_import_gaussians_from_spz(trained_run, tabletop_dir, tmp_path):
    from cos3d.data.ply import read_ply, write_spz
    from cos3d.pipeline.runner import train
    from cos3d.pipeline.train_config import TrainConfig

    g = read_ply(Path(trained_run) / "gaussians.ply", features=False)
    spz = tmp_path / "scene.spz"
    write_spz(spz, g)
    run = tmp_path / "run"
    train(TrainConfig(scene=str(tabletop_dir), out=run, stage="recon", gaussians=spz, progress=False))
    back = read_ply(run / "gaussians.ply", features=False)
    assert back.num == g.num
    assert torch.allclose(back.means, g.means, atol=1e-2)  # spz quantises positions
