"""``cos3d query`` on the shared trained run: JSON, masks, PLY, and one-line errors (exit 2)."""

from __future__ import annotations

import json

import numpy as np
import pytest

from cos3d.cli import entrypoint


def _run(argv, capsys):
    rc = entrypoint(argv)
    out = capsys.readouterr()
    return rc, out.out, out.err


def test_query_json_masks_and_ply(trained_run, tmp_path, capsys):
    import cos3d.pipeline.trained
    from PIL import Image

    ts = cos3d.pipeline.trained.load(trained_run, device="cpu")
    name = ts.scene.labels[sorted(ts.scene.labels)[-1]][0]
    test_views = [f.name for f in ts.scene.split("test")]
    masks = tmp_path / "m"
    ply = tmp_path / "sel.ply"
    rc, out, err = _run(["query", name, "--run", str(trained_run), "--json", "--masks-out", str(masks),
                         "--ply-out", str(ply)], capsys)
    assert rc == 0, err
    d = json.loads(out)
    assert d["query"] == name and not d["no_target"] and d["objects"]
    assert {"id", "num_gaussians", "score", "centroid", "box"} <= set(d["objects"][0])
    assert "total" in d["timings"]
    files = sorted(p.name for p in masks.iterdir())
    assert files == sorted(f"{v}.png" for v in test_views)
    f0 = ts.scene.frame(test_views[0])
    m = np.asarray(Image.open(masks / f"{test_views[0]}.png"))
    assert m.dtype == np.uint8 and m.shape == (f0.camera.height, f0.camera.width)
    assert set(np.unique(m)) <= {0, 255}
    from cos3d.data.ply import read_ply

    assert read_ply(ply).num == sum(o["num_gaussians"] for o in d["objects"])

    # absent: all-zero masks for the views asked for, protocol "selected", and the rich table by default
    rc, out, err = _run(["query", "walrus", "--run", str(trained_run), "--masks-out", str(tmp_path / "e"),
                         "--views", test_views[0], "--protocol", "selected"], capsys)
    assert rc == 0, err
    assert "no target" in out
    m = np.asarray(Image.open(tmp_path / "e" / f"{test_views[0]}.png"))
    assert not m.any()


@pytest.mark.parametrize(
    "argv,msg",
    [
        (["query", "  "], "empty text"),
        (["query", "--box", "0,0,5000,10", "--image", "{img}"], "outside"),
        (["query", "mug", "--masks-out", "{tmp}/x", "--views", "nope"], "unknown view"),
        (["query", "--click", "nope:3,3"], "unknown view"),
        (["query", "--box", "1,2,3"], "--box"),
    ],
)
def test_query_errors_exit_2(trained_run, tmp_path, capsys, argv, msg):
    import cos3d.pipeline.trained

    ts = cos3d.pipeline.trained.load(trained_run, device="cpu")
    img = str(ts.scene.split("train")[0].image_path)
    argv = [a.replace("{img}", img).replace("{tmp}", str(tmp_path)) for a in argv] + ["--run", str(trained_run)]
    rc, out, err = _run(argv, capsys)
    assert rc == 2
    assert msg in err and len(err.strip().splitlines()) == 1, err


def test_query_unknown_run_exit_2(tmp_path, capsys):
    rc, out, err = _run(["query", "mug", "--run", str(tmp_path / "nope")], capsys)
    assert rc == 2 and "no such run folder" in err


@pytest.mark.parametrize(
    "argv,msg",
    [
        (["query", "mug", "--within", " "], "--within is empty"),
        (["query", "mug", "--masks-out", "{file}"], "--masks-out"),
        (["query", "mug", "--ply-out", "{tmp}"], "--ply-out"),
        (["query", "mug", "--ply-out", "{file}/sel.ply"], "is a file, not a folder"),
        (["query", "--run", "{tmp}"], "nothing to answer"),
    ],
)
def test_query_bad_outputs_refused_before_any_work(tmp_path, capsys, argv, msg):
    """Checked before the run is even loaded: the run folder given is empty."""
    f = tmp_path / "a_file"
    f.write_text("x")
    argv = [a.replace("{file}", str(f)).replace("{tmp}", str(tmp_path)) for a in argv]
    if "--run" not in argv:
        argv += ["--run", str(tmp_path)]
    rc, out, err = _run(argv, capsys)
    assert rc == 2 and msg in err and len(err.strip().splitlines()) == 1, err
    assert f.read_text() == "x"


def test_query_defaults_to_the_latest_run(trained_run, tmp_path, capsys, monkeypatch):
    import shutil

    monkeypatch.chdir(tmp_path)
    rc, out, err = _run(["query", "mug"], capsys)
    assert rc == 2 and "--run" in err and "no trained run" in err
    (tmp_path / "runs").mkdir()
    shutil.copytree(trained_run, tmp_path / "runs" / "a")
    (tmp_path / "runs" / "b").mkdir()  # not a run: ignored
    rc, out, err = _run(["query", "blue mug", "--json"], capsys)
    assert rc == 0, err
    assert "runs/a" in err and "most recently trained" in err
    assert json.loads(out)["objects"]
